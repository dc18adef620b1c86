"""`splitserve bench`: an OpenAI-API load generator and its analysis.

Library entry point: ``await run_benchmark(BenchConfig(...)) -> BenchResult``
(``bench.serve.runner``). Definitions of the metrics follow vLLM's
benchmark_serving and SGLang's bench_serving; see ``bench.serve.metrics``.
"""
