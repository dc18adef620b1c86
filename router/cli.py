"""`splitserve router`: the OpenAI gateway in front of the prefill and decode pools."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("router", help="OpenAI-compatible router (KV-aware P/D scheduling)")
    p.add_argument(
        "--model", required=True, help="checkpoint directory (tokenizer, chat template, config), a .gguf file, or smollm2"
    )
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--prefill", default="", help="prefill workers host:port,...")
    p.add_argument("--decode", default="", help="decode workers host:port,...")
    p.add_argument("--discovery", default=None, help="k8s:namespace=NS,prefill-selector=SEL,decode-selector=SEL")
    p.add_argument(
        "--kvstore-events",
        default=None,
        help="kvstore master's KV-event endpoint tcp://HOST:PORT (snapshots on PORT+1): index store-held blocks",
    )
    p.add_argument("--kvstore-snapshot", default=None, help="snapshot endpoint when it is not the events port + 1")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--policy",
        choices=["kv-aware", "round-robin", "least-loaded", "random"],
        default="kv-aware",
        help="a shipped scheduler config (router/policies/NAME.yaml)",
    )
    p.add_argument(
        "--scheduler-config",
        default=None,
        metavar="FILE",
        help="scheduler pipeline config, YAML or JSON (overrides --policy); see router/scheduler_config.py",
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accepted Bearer key (repeatable; visible in `ps`: prefer --api-key-file or SPLITSERVE_API_KEYS)",
    )
    p.add_argument("--api-key-file", default=None, help="file of accepted Bearer keys, one per line")
    p.add_argument(
        "--salt-per-api-key",
        action="store_true",
        help="give each API key its own prefix cache (tenants never share cached blocks)",
    )
    p.add_argument("--ttft-slo-ms", type=float, default=None)
    p.add_argument(
        "--colocate-threshold",
        type=int,
        default=None,
        help="uncached prompt tokens below which decode prefills (default: the scheduler config's)",
    )
    p.add_argument(
        "--prefill-saturation-tokens",
        type=int,
        default=None,
        help="queued prompt tokens at which a prefill worker counts as saturated (colocate instead; "
        "the prefill pool's saturation = 1 for the autoscaler; default: the scheduler config's)",
    )
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--health-interval", type=float, default=1.0, help="seconds between health checks and GetLoad polls")
    p.add_argument(
        "--ext-proc-port",
        type=int,
        default=0,
        help="also serve the Gateway API Inference Extension endpoint picker (Envoy ext_proc gRPC) here; 0 = off",
    )
    p.add_argument(
        "--ext-proc-target-port",
        type=int,
        default=0,
        help="port the picked endpoints serve on (the InferencePool's targetPort); 0 = the worker's gRPC port",
    )
    p.add_argument(
        "--allow-client-chat-template",
        action="store_true",
        help="accept chat_template_kwargs.chat_template from clients (their Jinja runs sandboxed, bounded)",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log every HTTP request (uvicorn's access log; off by default: a log line per request is CPU on the hot path)",
    )
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds a client may take to send its request body")
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=5.0,
        help="seconds of silence after which a request leaves a worker that fails its health checks",
    )
    p.add_argument(
        "--request-timeout", type=float, default=600.0, help="deadline of one request on the workers, retries included (seconds)"
    )
    p.set_defaults(func=run)


def api_keys(args: argparse.Namespace) -> list[str]:
    """Keys from --api-key, --api-key-file and $SPLITSERVE_API_KEYS (comma-separated)."""
    keys = list(args.api_key)
    if args.api_key_file:
        keys += [line.strip() for line in open(args.api_key_file).read().splitlines() if line.strip()]
    keys += [k.strip() for k in os.environ.get("SPLITSERVE_API_KEYS", "").split(",") if k.strip()]
    return keys


def run(args: argparse.Namespace) -> int:
    import gc

    import uvicorn

    from engine.model_source import resolve_model
    from router.config import RouterConfig
    from router.openai_api import create_app
    from router.scheduler_config import SchedulerConfigError, load_policy, load_scheduler_config

    if not args.discovery and not args.decode:
        raise SystemExit("splitserve router: give --decode (and --prefill) addresses, or --discovery")
    try:
        scheduler = load_scheduler_config(args.scheduler_config) if args.scheduler_config else load_policy(args.policy)
    except SchedulerConfigError as exc:
        raise SystemExit(f"splitserve router: {exc}") from exc
    if args.colocate_threshold is not None:
        scheduler.colocate_threshold_tokens = args.colocate_threshold
    if args.ttft_slo_ms is not None:
        scheduler.ttft_slo_ms = args.ttft_slo_ms
    if args.prefill_saturation_tokens is not None:
        scheduler.prefill_saturation_tokens = args.prefill_saturation_tokens
    config = RouterConfig(
        model_dir=str(resolve_model(args.model)),
        served_model_name=args.served_model_name,
        prefill=[a for a in args.prefill.split(",") if a],
        decode=[a for a in args.decode.split(",") if a],
        discovery=args.discovery,
        kvstore_events=args.kvstore_events,
        kvstore_snapshot=args.kvstore_snapshot,
        api_keys=api_keys(args),
        salt_per_api_key=args.salt_per_api_key,
        block_size=args.block_size,
        stall_timeout_s=args.stall_timeout,
        allow_client_chat_template=args.allow_client_chat_template,
        body_timeout_s=args.body_timeout,
        request_timeout_s=args.request_timeout,
        health_interval_s=args.health_interval,
        scheduler=scheduler,
    )
    app = create_app(config)
    if args.ext_proc_port:
        from router.ext_proc import serve_picker_with

        serve_picker_with(app, args.host, args.ext_proc_port, args.ext_proc_target_port or None)
    # Everything built so far lives as long as the process: keep it out of the collector's
    # full passes, which would otherwise walk it (and stall requests) every time they run.
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=args.access_log)
    return 0
