#!/usr/bin/env python3
"""Test git host for projectvm: git smart-HTTP over HTTPS plus a plain-HTTP apt repository.

Python standard library only. Git requests are answered by the real `git http-backend`,
run as a CGI program with the request body and the response streamed through.

  https://ADDR:HTTPS_PORT/public/NAME.git/...   no authentication
  https://ADDR:HTTPS_PORT/private/NAME.git/...  HTTP basic auth; the password must equal one
                                                of the tokens in --tokens (one a line, '#'
                                                comments; the file is re-read per request)
  https://ADDR:HTTPS_PORT/healthz               200 "ok"
  https://ADDR:HTTPS_PORT/releases/FILE         files of --releases-dir (e.g. a code-server
                                                release tarball and its .sha256), no auth
  http://ADDR:HTTP_PORT/apt/...                 files of --apt-dir (flat apt repository)
  http://ADDR:HTTP_PORT/healthz                 200 "ok"

Wrong or missing credentials: 401 with `WWW-Authenticate: Basic realm="pvm-git"`.
A repository that does not exist: 404 (for /private/ only after authentication).
Pushes (receive-pack) only to /private/, with a token: 403 on /public/.
Neither the Authorization header nor any token is ever logged.
"""

import argparse
import base64
import hmac
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer

REALM = "pvm-git"
REPO_RE = re.compile(r"^/(public|private)/([A-Za-z0-9][A-Za-z0-9._-]*\.git)(/.*)?$")
RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
CHUNK = 64 * 1024


def log(msg):
    sys.stderr.write("%s gitserver: %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), msg))
    sys.stderr.flush()


def read_tokens(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [t.strip() for t in f if t.strip() and not t.lstrip().startswith("#")]
    except FileNotFoundError:
        return []


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        # HTTPServer.server_bind resolves the host name (getfqdn), which stalls for seconds
        # in a namespace without DNS: bind without it
        import socketserver
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class GitHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pvm-git"
    sys_version = ""
    cfg = None  # set in main()

    # --- logging: method, path, status, user; never headers ------------------------------
    def log_message(self, fmt, *args):
        pass

    def log_request(self, code="-", size="-"):
        user = getattr(self, "_user", None) or "-"
        path = self.path.split("?", 1)
        shown = path[0] + ("?" + path[1] if len(path) > 1 and path[1].startswith("service=") else "")
        log('%s "%s %s" %s user=%s' % (self.client_address[0], self.command, shown, code, user))

    # --- helpers ---------------------------------------------------------------------------
    def _simple(self, code, body, extra=None):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if self._body_pending():
            # we did not read the request body: do not reuse the connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.log_request(code)

    def _body_pending(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        cl = self.headers.get("Content-Length")
        return "chunked" in te or (cl not in (None, "", "0"))

    def _authenticate(self):
        """Returns the user name when the basic-auth password is a current token, else None."""
        h = self.headers.get("Authorization") or ""
        if not h[:6].lower() == "basic ":
            return None
        try:
            raw = base64.b64decode(h[6:].strip(), validate=True).decode("utf-8")
        except Exception:
            return None
        user, sep, password = raw.partition(":")
        if not sep or not password:
            return None
        ok = False
        for tok in read_tokens(self.cfg.tokens):
            # compare every token, in constant time, so timing says nothing
            if hmac.compare_digest(tok.encode(), password.encode()):
                ok = True
        return (user or "token") if ok else None

    def _iter_request_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("eof in chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until the blank line
                    while True:
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    return
                left = size
                while left:
                    b = self.rfile.read(min(left, CHUNK))
                    if not b:
                        raise ConnectionError("eof in chunk")
                    left -= len(b)
                    yield b
                self.rfile.readline(3)  # CRLF after the chunk
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                b = self.rfile.read(min(left, CHUNK))
                if not b:
                    raise ConnectionError("eof in body")
                left -= len(b)
                yield b

    # --- dispatch --------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def _dispatch(self):
        self._user = None
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            return self._simple(200, "ok\n")
        if path.startswith("/releases/"):
            return self._release(path[len("/releases/"):])
        m = REPO_RE.match(path)
        if not m or "/../" in path + "/" or "/./" in path:
            return self._simple(404, "not found\n")
        kind, name, rest = m.group(1), m.group(2), m.group(3) or ""
        if kind == "private":
            user = self._authenticate()
            if user is None:
                return self._simple(401, "authentication required\n",
                                    {"WWW-Authenticate": 'Basic realm="%s"' % REALM})
            self._user = user
        elif rest.endswith("/git-receive-pack") or "service=git-receive-pack" in self.path:
            return self._simple(403, "anonymous push is not allowed\n")
        root = os.path.join(self.cfg.repos, kind)
        if not os.path.isdir(os.path.join(root, name)):
            return self._simple(404, "repository not found\n")
        self._run_backend(root, "/" + name + rest)

    def _release(self, name):
        d = self.cfg.releases_dir
        if not d or not RELEASE_RE.match(name) or self.command == "POST":
            return self._simple(404, "not found\n")
        f = os.path.join(d, name)
        if not os.path.isfile(f):
            return self._simple(404, "not found\n")
        size = os.path.getsize(f)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command != "HEAD":
            with open(f, "rb") as fh:
                shutil.copyfileobj(fh, self.wfile, 1 << 20)
        self.log_request(200)

    def _run_backend(self, root, path_info):
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": "pvm-git",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path_info,
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type") or "",
        }
        if self._user:
            env["REMOTE_USER"] = self._user  # also enables push (receive-pack) for private repos
        if self.headers.get("Content-Length"):
            env["CONTENT_LENGTH"] = self.headers["Content-Length"]
        for h in ("Content-Encoding", "Git-Protocol", "Accept", "User-Agent"):
            v = self.headers.get(h)
            if v:
                env["HTTP_" + h.upper().replace("-", "_")] = v
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]

        proc = subprocess.Popen(["git", "http-backend"], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err_chunks = []
        t_err = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
        t_err.start()
        feed_error = []

        def feed():
            try:
                for b in self._iter_request_body():
                    proc.stdin.write(b)
            except (BrokenPipeError, ConnectionError, ValueError) as e:
                feed_error.append(e)
            finally:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass

        t_in = threading.Thread(target=feed, daemon=True)
        t_in.start()

        # CGI response headers
        status, headers = 200, []
        while True:
            line = proc.stdout.readline()
            if not line:
                break
            line = line.rstrip(b"\r\n")
            if not line:
                break
            k, _, v = line.decode("latin-1").partition(":")
            v = v.strip()
            if k.lower() == "status":
                status = int(v.split()[0])
            else:
                headers.append((k, v))
        t_in.join()
        if feed_error:
            self.close_connection = True
        self.send_response(status)
        has_len = False
        for k, v in headers:
            if k.lower() == "content-length":
                has_len = True
            self.send_header(k, v)
        chunked = not has_len and self.command != "HEAD"
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                b = proc.stdout.read1(CHUNK) if hasattr(proc.stdout, "read1") else proc.stdout.read(CHUNK)
                if not b:
                    break
                if self.command == "HEAD":
                    continue
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
                else:
                    self.wfile.write(b)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            proc.kill()
        proc.wait()
        t_err.join(timeout=5)
        err = b"".join(c for c in err_chunks if c).decode("utf-8", "replace").strip()
        if err:
            log("http-backend %s: %s" % (path_info, err[-2000:]))
        self.log_request(status)

    def send_response(self, code, message=None):
        # like the base class, minus its logging: each request is logged once, at its end
        self.send_response_only(code, message)
        self.send_header("Server", self.version_string())
        self.send_header("Date", self.date_time_string())


class AptHandler(SimpleHTTPRequestHandler):
    server_version = "pvm-apt"
    sys_version = ""

    def log_message(self, fmt, *args):
        log("apt %s %s" % (self.client_address[0], fmt % args))

    def _allowed(self):
        p = self.path.split("?", 1)[0]
        return p == "/healthz" or p.startswith("/apt/") or p == "/apt"

    def do_GET(self):
        if self.path.split("?", 1)[0] == "/healthz":
            data = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if not self._allowed():
            return self.send_error(404)
        return super().do_GET()

    def do_HEAD(self):
        if not self._allowed():
            return self.send_error(404)
        return super().do_HEAD()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", default="10.213.0.2")
    ap.add_argument("--https-port", type=int, action="append",
                    help="git over https on this port; repeat for several (default 443)")
    ap.add_argument("--http-port", type=int, default=8081, help="0 disables the apt server")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--repos", required=True, help="holds public/ and private/")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--apt-dir", help="directory served at /apt/")
    ap.add_argument("--releases-dir", help="directory whose files are served at https://.../releases/")
    ap.add_argument("--pidfile")
    a = ap.parse_args()

    if not shutil.which("git"):
        sys.exit("gitserver: git not found")
    GitHandler.cfg = a

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(a.cert, a.key)
    servers = []
    for port in a.https_port or [443]:
        https = Server((a.addr, port), GitHandler)
        https.daemon_threads = True
        https.socket = ctx.wrap_socket(https.socket, server_side=True)
        servers.append(https)

    if a.http_port:
        apt_root = os.path.dirname(os.path.abspath(a.apt_dir)) if a.apt_dir else None
        if a.apt_dir and os.path.basename(os.path.abspath(a.apt_dir)) != "apt":
            sys.exit("gitserver: --apt-dir must be a directory named 'apt'")

        class H(AptHandler):
            def __init__(self, *args, **kw):
                super().__init__(*args, directory=apt_root or "/nonexistent", **kw)

        http = Server((a.addr, a.http_port), H)
        http.daemon_threads = True
        servers.append(http)

    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    if a.pidfile:
        with open(a.pidfile + ".tmp", "w") as f:
            f.write("%d\n" % os.getpid())
        os.replace(a.pidfile + ".tmp", a.pidfile)
    log("serving git on https://%s port(s) %s and http://%s:%d/apt/"
        % (a.addr, ",".join(str(p) for p in a.https_port or [443]), a.addr, a.http_port))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(3600):
        pass
    for s in servers:
        s.shutdown()
    if a.pidfile:
        try:
            os.unlink(a.pidfile)
        except FileNotFoundError:
            pass
    log("stopped")


if __name__ == "__main__":
    main()
