"""Client-sent chat templates render in a short-lived child process, in jinja2's sandbox.

A Jinja template is a program: the sandbox (ImmutableSandboxedEnvironment) keeps it
from touching Python objects, but not from looping for hours or building a huge
string, and a thread that runs it cannot be stopped. So a client template (only when
the operator allowed them) renders in a child process with CPU-time and memory limits,
killed at the deadline; the router's event loop and threads never run client code.
The model's own template is the operator's and renders in a thread.

Run as ``python -m router.template_sandbox``: JSON request on stdin, JSON reply on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

MEMORY_LIMIT_BYTES = 512 << 20
MAX_OUTPUT_CHARS = 4 << 20


class TemplateRejected(ValueError):
    """The client template failed, ran out of its limits, or did not finish in time."""


async def render_in_sandbox(template: str, variables: dict[str, Any], timeout_s: float) -> str:
    """Render ``template`` with ``variables`` in a killable child process (see module doc)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router.template_sandbox", str(max(1, int(timeout_s + 1))),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    request = json.dumps({"template": template, "variables": variables}).encode()
    try:
        out, _ = await asyncio.wait_for(proc.communicate(request), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise TemplateRejected(f"rendering the chat template took over {timeout_s:g} s") from None
    try:
        reply = json.loads(out)
    except ValueError:
        raise TemplateRejected("the chat template exhausted its resource limits") from None
    if "error" in reply:
        raise TemplateRejected(f"chat template failed: {reply['error']}")
    return reply["text"]


def _render(template: str, variables: dict[str, Any]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    text = env.from_string(template).render(**variables)
    if len(text) > MAX_OUTPUT_CHARS:
        raise ValueError(f"the rendered prompt exceeds {MAX_OUTPUT_CHARS} characters")
    return text


def main() -> None:
    import resource

    cpu_s = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    request = json.loads(sys.stdin.buffer.read())
    try:
        reply = {"text": _render(request["template"], request["variables"])}
    except Exception as exc:  # any template failure is the client's, reported as such
        reply = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    sys.stdout.write(json.dumps(reply))


if __name__ == "__main__":
    main()
