"""The network service (`ctrt serve`): an OpenAI-compatible completions API and persistent
streams over HTTP, on one engine thread that owns the Session.

Threads: the event loop (FastAPI on uvicorn) parses requests and streams answers; the engine
thread (engine.py) owns the Session and the generation scheduler and is fed through a queue;
the store thread (store_worker.py) makes every write durable. The loop never waits on an
engine call and the engine thread never waits on a disk.

Imports runtime only (never torch, ct_reference, export, cli or benchmarks).
"""
