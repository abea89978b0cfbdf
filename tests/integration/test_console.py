"""The console against the real engine (the session's `adaptserve serve`): a chat
streamed into the page by real clicks in headless Chromium."""

from __future__ import annotations

import re

from tests.helpers import API_KEY, Browser, Server, console_sign_in


def test_console_chat_streams_an_answer_from_the_real_engine(server: Server, browser: Browser) -> None:
    console_sign_in(browser, server.url, API_KEY)
    browser.click("#nav-chat")
    browser.click("#chat-model option[value=default]")
    browser.type("#chat-temperature", "0")
    browser.type("#chat-max-tokens", "24")
    browser.type("#chat-input", "What is the capital of France?")
    browser.click("#chat-send")
    stats = browser.wait_text("#chat-stats", "completion tokens", timeout_s=300)
    reply = browser.text(".message.assistant .reply-text")
    assert "Paris" in reply, reply
    completion = re.search(r"(\d+) completion tokens", stats)
    assert completion is not None and 0 < int(completion.group(1)) <= 24, stats
    assert re.search(r"first token \d+ ms", stats), stats
    assert browser.console_errors() == []
