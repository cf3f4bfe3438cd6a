#!/usr/bin/env python3
"""A scripted fake of the Anthropic Messages API, on loopback, for tests.

Usage: anthropic.py PORT_FILE SCRIPT_JSON LOG_FILE

SCRIPT_JSON is a JSON list of Bash commands. The server listens on
127.0.0.1 (a free port, written to PORT_FILE once it listens). Each
`POST /v1/messages` whose request offers the `Bash` tool is answered with
the next scripted command as a `tool_use` block of the Bash tool (the
number of `tool_result` blocks already in the conversation says which one),
then, once every command has its result, with a final text answer. Any
other request (titles, quota checks) gets a short text answer. Streaming
(`"stream": true`, server-sent events) and plain JSON answers are both
served. Every request's path and a summary go to LOG_FILE, one JSON line
each. The server stops by itself after 10 minutes.

A step `@TOOL JSON` (e.g. `@Grep {"pattern": "x"}`) is a `tool_use` of tool
TOOL with input JSON instead of a Bash command.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT_FILE, SCRIPT, LOG_FILE = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
LOCK = threading.Lock()


def log(obj):
    with LOCK, open(LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")


def count_tool_results(messages):
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    n += 1
    return n


def offers_bash(req):
    return any(isinstance(t, dict) and t.get("name") == "Bash" for t in req.get("tools") or [])


def answer_blocks(req):
    """The content blocks of the answer, and its stop reason."""
    if not offers_bash(req):
        return [{"type": "text", "text": "Scripted title"}], "end_turn"
    done = count_tool_results(req.get("messages") or [])
    if done < len(SCRIPT):
        step = SCRIPT[done]
        if step.startswith("@"):
            name, spec = step[1:].split(" ", 1)
            tool_input = json.loads(spec)
        else:
            name = "Bash"
            tool_input = {"command": step, "description": "scripted step %d" % done}
        block = {
            "type": "tool_use",
            "id": "toolu_fake%02d" % done,
            "name": name,
            "input": tool_input,
        }
        return [block], "tool_use"
    return [{"type": "text", "text": "All scripted steps done."}], "end_turn"


def usage():
    return {
        "input_tokens": 10,
        "output_tokens": 10,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        log({"method": "GET", "path": self.path})
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            req = {}
        path = self.path.split("?", 1)[0]
        if path.endswith("/count_tokens"):
            return self.json({"input_tokens": 10})
        if not path.endswith("/v1/messages"):
            log({"method": "POST", "path": self.path, "unknown": True})
            return self.json({})
        blocks, stop = answer_blocks(req)
        log(
            {
                "method": "POST",
                "path": self.path,
                "stream": bool(req.get("stream")),
                "bash": offers_bash(req),
                "tool_results": count_tool_results(req.get("messages") or []),
                "answer": blocks,
            }
        )
        model = req.get("model") or "claude-fake"
        msg_id = "msg_fake%d" % int(time.time() * 1e6)
        if not req.get("stream"):
            return self.json(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": blocks,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": usage(),
                }
            )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(name, data):
            self.wfile.write(("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode())
            self.wfile.flush()

        start = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(),
        }
        event("message_start", {"type": "message_start", "message": start})
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                event(
                    "content_block_start",
                    {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}},
                )
                delta = {"type": "text_delta", "text": block["text"]}
            else:
                first = dict(block, input={})
                event("content_block_start", {"type": "content_block_start", "index": i, "content_block": first})
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
            event("content_block_stop", {"type": "content_block_stop", "index": i})
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 10},
            },
        )
        event("message_stop", {"type": "message_stop"})

    def json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = PORT_FILE + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    import os

    os.rename(tmp, PORT_FILE)
    threading.Timer(600, server.shutdown).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
