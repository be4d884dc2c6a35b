"""Notifications of fills, risk denials and halts, trading-state changes and errors to Telegram.

``serve.notify=telegram`` turns them on; the bot token and chat id come from the environment
(``TELEGRAM_BOT_TOKEN``, ``TELEGRAM_CHAT_ID``) and are never logged or stored. Messages go out
from a background thread through a bounded queue, so a slow or unreachable Telegram never delays a
decision; a message that fails is logged (without the token) and dropped.
``serve.telegram_api_url`` points at another host (a loopback stand-in in tests).
"""

from __future__ import annotations

import logging
import os
import queue
import threading

import requests

log = logging.getLogger("serve")
TELEGRAM_API = "https://api.telegram.org"


class NotifyError(ValueError):
    """Notifications asked for but not configured. Policy: the bot does not start."""


class TelegramNotifier:
    def __init__(self, token: str, chat_id: str, api_url: str = TELEGRAM_API, timeout_s: float = 5.0,
                 max_queue: int = 100):  # fmt: skip
        self._url = f"{api_url.rstrip('/')}/bot{token}/sendMessage"
        self.chat_id, self.timeout_s = chat_id, timeout_s
        self.sent = 0
        self.failed = 0
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="telegram", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, api_url: str | None = None) -> TelegramNotifier:
        token, chat = os.environ.get("TELEGRAM_BOT_TOKEN"), os.environ.get("TELEGRAM_CHAT_ID")
        if not token or not chat:
            raise NotifyError(
                "serve.notify=telegram needs TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID in the environment"
            )
        return cls(token, chat, api_url or TELEGRAM_API)

    def send(self, text: str) -> None:
        """Queue a message; when the queue is full the message is dropped and logged."""
        try:
            self._queue.put_nowait(text[:4000])
        except queue.Full:
            self.failed += 1
            log.warning("telegram queue full; dropped: %s", text[:80])

    def _run(self) -> None:
        while True:
            text = self._queue.get()
            if text is None:
                return
            try:
                answer = requests.post(self._url, json={"chat_id": self.chat_id, "text": text},
                                       timeout=self.timeout_s)  # fmt: skip
                answer.raise_for_status()
                self.sent += 1
            except requests.RequestException as exc:
                self.failed += 1
                # the URL holds the token: log the error's type and status only
                status = getattr(getattr(exc, "response", None), "status_code", None)
                log.warning(
                    "telegram message not sent (%s%s)",
                    type(exc).__name__,
                    f", HTTP {status}" if status else "",
                )

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued (up to ``timeout_s``), then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout_s)
