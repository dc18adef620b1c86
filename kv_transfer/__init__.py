"""How prompt KV moves from a prefill engine to a decode engine.

connector.py   the interface every transport implements (sender side + receiver side)
contracts/kv_handle.py  KVHandle: the transport-neutral answer a prefill worker gives (worker.proto)
direct.py      device-direct transport: the decode engine pulls blocks straight out of the prefill
               engine's KV pool on the same host (CUDA IPC on GPU, a shared-memory pool on CPU)
p2p.py         point-to-point transport, any host: the prefill engine sends the blocks over a
               process group of the two engines (NCCL between GPUs, gloo on CPU)
peer_pool.py   sharing and mapping a KV pool across processes
release.py     the decode side's "done with transfer X" message to the prefill side
store.py       store transport: blocks through the KV store (also the cache tier for prefix reuse)

The prefill worker's side of a handoff lives in prefill_worker/kv_export.py, the decode
worker's in decode_worker/kv_import.py.
"""
