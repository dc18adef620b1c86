"""EngineConfig: the one configuration object of the engine."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CPU_KV_CACHE_BYTES = 512 * 1024 * 1024


@dataclass(slots=True)
class EngineConfig:
    model: str  # HF checkpoint directory, a .gguf file or a packaged model name; resolved to a directory below
    dtype: str = "auto"  # "auto" (checkpoint dtype; float32 on CPU for half checkpoints), "float32", "bfloat16", "float16"
    device: str = "auto"  # "auto" = cuda when available, else cpu
    block_size: int = 16
    kv_cache_bytes: int | None = None  # explicit KV pool budget (any device); default: CPU 512 MiB, GPU by utilization
    gpu_memory_utilization: float = 0.9  # GPU: fraction of total memory the engine may use after warm-up
    num_kv_blocks: int | None = None  # exact pool size; overrides both budgets
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048  # per-step token budget (decodes + prefill chunks)
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    kv_events_medium: str = "gpu"  # medium named in published KV events
    load_format: str = "safetensors"  # "dummy": random weights made on the device (real-shape benchmarks)
    tensor_parallel_size: int = 1  # rank processes, one device each (engine/executor.py)
    expert_parallel: bool = False  # MoE: whole experts split over the ranks instead of TP-sharding each expert
    distributed_executor: str = "mp"  # "mp" (multiprocessing spawn) or "ray" (actors in a placement group)
    distributed_timeout_s: float = 60.0  # a collective waiting longer than this fails instead of hanging
    nnodes: int = 1  # hosts the ranks span (engine/remote_ranks.py); tensor_parallel_size / nnodes ranks on each
    dist_host: str = "127.0.0.1"  # rank 0's address for the rendezvous (multi-node: the leader's DNS name)
    dist_port: int = 0  # rendezvous port, plan channel on dist_port + 1 (0 = free port; multi-node needs a fixed one)
    enforce_eager: bool = False  # True: never capture CUDA graphs (decode steps run eagerly, as prefill does)
    # greedy decode over CUDA graphs runs one step ahead of the host: step N+1 is launched from
    # step N's tokens on the device before the host reads and emits them (LLMEngine.step)
    async_decode: bool = True
    # a decode worker's direct import copies its KV into blocks of its own as soon as it arrives, on
    # a stream of its own beside the step in flight, instead of in the step that admits it
    # (LLMEngine.land_import)
    land_imports: bool = True
    kv_pool_file: str | None = None  # CPU: back the KV pool with this file (/dev/shm) so a peer on the host can map it

    def __post_init__(self) -> None:
        from engine.model_source import resolve_model

        # resolved once here, so that rank processes and the KV fingerprint all see the same directory
        self.model = str(resolve_model(self.model))
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.max_num_batched_tokens <= 0 or self.max_num_seqs <= 0:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be positive")
        if self.load_format not in ("safetensors", "dummy"):
            raise ValueError(f"load_format must be safetensors or dummy, got {self.load_format!r}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.distributed_executor not in ("mp", "ray"):
            raise ValueError(f"distributed_executor must be mp or ray, got {self.distributed_executor!r}")
        if self.nnodes < 1 or self.tensor_parallel_size % self.nnodes:
            raise ValueError(f"tensor_parallel_size {self.tensor_parallel_size} must be a multiple of nnodes {self.nnodes}")
        if self.nnodes > 1 and (self.distributed_executor != "mp" or not 0 < self.dist_port < 65535):
            raise ValueError("a multi-node engine needs distributed_executor='mp' and a fixed dist_port (1-65534)")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
