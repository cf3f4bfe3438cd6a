#!/usr/bin/env python3
"""A scripted fake of the OpenAI Responses API, on loopback, for tests (Codex).

Usage: openai.py PORT_FILE SCRIPT_JSON LOG_FILE

SCRIPT_JSON is a JSON list of shell commands. The server listens on
127.0.0.1 (a free port, written to PORT_FILE once it listens). Each
`POST .../responses` whose request offers a shell tool is answered with
the next scripted command as a `function_call` of that tool (the number of
`function_call_output` items already in the request's input says which
one; call ids `call_fake00`, `call_fake01`, ...), then, once every command
has its output, with a final assistant message. The tool is the first one
offered of `exec_command` (arguments `{"cmd": ...}`), `shell_command`
(`{"command": "..."}`) and `shell` (`{"command": ["bash", "-lc", ...]}`).
A command may begin with `@yield=MS ` (removed from the command): its
`exec_command` call then asks for `yield_time_ms` MS (default 10000), so
that the call returns while the command still runs.
Any other request gets a short message. Answers are streamed as
server-sent events (`response.created`, `response.output_item.done`,
`response.completed`), as the Codex CLI reads them. GET requests (model
lists) get an empty list; a websocket upgrade is refused (404), so the
client falls back to HTTP. Every request's path and a summary go to
LOG_FILE, one JSON line each. The server stops by itself after 10 minutes.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT_FILE, SCRIPT, LOG_FILE = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
LOCK = threading.Lock()
SHELL_TOOLS = ("exec_command", "shell_command", "shell")


def log(obj):
    with LOCK, open(LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")


def tool_names(req):
    names = []
    for t in req.get("tools") or []:
        if isinstance(t, dict):
            name = t.get("name") or (t.get("function") or {}).get("name")
            if name:
                names.append(name)
    return names


def count_outputs(req):
    items = req.get("input")
    if not isinstance(items, list):
        return 0
    return sum(
        1
        for i in items
        if isinstance(i, dict) and i.get("type") in ("function_call_output", "custom_tool_call_output")
    )


def shell_tool(req):
    names = tool_names(req)
    for t in SHELL_TOOLS:
        if t in names:
            return t
    return None


def arguments(tool, command):
    yield_ms = 10000
    if command.startswith("@yield="):
        marker, command = command.split(" ", 1)
        yield_ms = int(marker[len("@yield="):])
    if tool == "exec_command":
        return {"cmd": command, "yield_time_ms": yield_ms}
    if tool == "shell_command":
        return {"command": command, "timeout_ms": 10000}
    return {"command": ["bash", "-lc", command], "timeout_ms": 10000}


def message(text):
    return {
        "type": "message",
        "role": "assistant",
        "id": "msg_fake%d" % int(time.time() * 1e6),
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def answer_items(req):
    tool = shell_tool(req)
    if tool is None:
        return [message("Scripted answer.")]
    done = count_outputs(req)
    if done < len(SCRIPT):
        return [
            {
                "type": "function_call",
                "id": "fc_fake%02d" % done,
                "call_id": "call_fake%02d" % done,
                "name": tool,
                "arguments": json.dumps(arguments(tool, SCRIPT[done])),
            }
        ]
    return [message("All scripted steps done.")]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        log({"method": "GET", "path": self.path, "upgrade": self.headers.get("Upgrade")})
        if self.headers.get("Upgrade"):
            return self.reply(404, {"error": {"message": "no websockets here"}})
        return self.reply(200, {"object": "list", "data": [], "models": []})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if (self.headers.get("Content-Encoding") or "").lower() == "zstd":
            log({"method": "POST", "path": self.path, "error": "zstd body"})
            return self.reply(415, {"error": {"message": "zstd not supported"}})
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            req = {}
        path = self.path.split("?", 1)[0]
        if not path.endswith("/responses"):
            log({"method": "POST", "path": self.path, "unknown": True})
            return self.reply(200, {})
        items = answer_items(req)
        log(
            {
                "method": "POST",
                "path": self.path,
                "stream": bool(req.get("stream")),
                "tools": tool_names(req),
                "outputs": count_outputs(req),
                "answer": items,
            }
        )
        resp_id = "resp_fake%d" % int(time.time() * 1e6)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(data):
            self.wfile.write(("event: %s\ndata: %s\n\n" % (data["type"], json.dumps(data))).encode())
            self.wfile.flush()

        event({"type": "response.created", "response": {"id": resp_id}})
        for i, item in enumerate(items):
            event({"type": "response.output_item.added", "output_index": i, "item": item})
            event({"type": "response.output_item.done", "output_index": i, "item": item})
        event(
            {
                "type": "response.completed",
                "response": {
                    "id": resp_id,
                    "usage": {
                        "input_tokens": 10,
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens": 10,
                        "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": 20,
                    },
                },
            }
        )

    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
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
    os.rename(tmp, PORT_FILE)
    threading.Timer(600, server.shutdown).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
