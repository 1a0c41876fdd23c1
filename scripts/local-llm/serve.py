"""Serve a GGUF model behind llama.cpp's OpenAI-compatible HTTP server (xllamacpp).

Usage: serve.py MODEL.gguf [PORT]
Environment: N_CTX (4096), N_THREADS (2), MODEL_ALIAS (local), CHAT_TEMPLATE_FILE, VERBOSITY (3).
Listens on 127.0.0.1 only and never contacts a model hub. Stops on SIGTERM or SIGINT.
"""
import os
import signal
import sys
import threading

import xllamacpp as xlc

params = xlc.CommonParams()
params.model.path = sys.argv[1]
params.hostnames = ["127.0.0.1"]
params.port = int(sys.argv[2]) if len(sys.argv) > 2 else 8089
params.n_ctx = int(os.environ.get("N_CTX", "4096"))
params.n_parallel = 1
params.use_jinja = True
params.offline = True
params.ui = False
threads = int(os.environ.get("N_THREADS", "2"))
params.cpuparams.n_threads = threads
params.cpuparams_batch.n_threads = threads
params.model_alias = {os.environ.get("MODEL_ALIAS", "local")}
if os.environ.get("CHAT_TEMPLATE_FILE"):
    with open(os.environ["CHAT_TEMPLATE_FILE"], encoding="utf-8") as f:
        params.chat_template = f.read()
params.verbosity = int(os.environ.get("VERBOSITY", "3"))
server = xlc.Server(params)
print("LISTENING", server.listening_address, flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
stop.wait()
