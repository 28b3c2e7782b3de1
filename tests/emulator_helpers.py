"""Running an aiohttp app (an emulator, or a misbehaving stand-in) on a thread, so a backend
can drive it from its own event loop in the test's thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from aiohttp import web

from kvbench.backends.launch import free_port


class ListSink:
    def __init__(self):
        self.records, self.samples = [], []

    def request(self, record):
        self.records.append(record)

    def sample(self, sample):
        self.samples.append(sample)


@contextlib.contextmanager
def serving(app: web.Application):
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
