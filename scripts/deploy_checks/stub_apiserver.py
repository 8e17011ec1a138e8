"""A tiny stand-in for a Kubernetes API server, good enough for `helm install`.

Helm (here through helm-sdkpy, which has no dry-run/template action) needs a
server to install into. This one answers discovery, keeps Helm's release
Secrets, echoes back every object it is sent and records it, so the check can
read exactly the manifests Helm would have applied. It listens on 127.0.0.1
only, on a free port, in a background thread.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

# group/version -> [(plural, kind, namespaced)]
RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("pods", "Pod", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("namespaces", "Namespace", False),
        ("endpoints", "Endpoints", True),
    ],
    "apps/v1": [
        ("deployments", "Deployment", True),
        ("statefulsets", "StatefulSet", True),
        ("daemonsets", "DaemonSet", True),
        ("replicasets", "ReplicaSet", True),
    ],
    "batch/v1": [("jobs", "Job", True), ("cronjobs", "CronJob", True)],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    "autoscaling/v1": [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "rbac.authorization.k8s.io/v1": [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ],
    "networking.k8s.io/v1": [
        ("ingresses", "Ingress", True),
        ("networkpolicies", "NetworkPolicy", True),
    ],
    "discovery.k8s.io/v1": [("endpointslices", "EndpointSlice", True)],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True)],
}

_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class StubApiServer:
    """Records created objects in ``self.created`` (list of dicts, in order)."""

    def __init__(self) -> None:
        self.created: list[dict] = []
        self.store: dict[tuple, dict] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._rv = 1
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the check's output clean
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b"{}"
                return json.loads(raw or b"{}")

            def do_GET(self):
                outer._handle(self, "GET")

            def do_POST(self):
                outer._handle(self, "POST")

            def do_PUT(self):
                outer._handle(self, "PUT")

            def do_PATCH(self):
                outer._handle(self, "PATCH")

            def do_DELETE(self):
                outer._handle(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ---- lifecycle -------------------------------------------------------
    def reset(self) -> None:
        """Forget every object and request (between two installs)."""
        with self._lock:
            self.created.clear()
            self.store.clear()
            self.requests.clear()

    def __enter__(self) -> "StubApiServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, namespace: str = "default") -> str:
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "stub", "cluster": {"server": self.url}}],
                "users": [{"name": "stub", "user": {}}],
                "contexts": [
                    {"name": "stub", "context": {"cluster": "stub", "user": "stub", "namespace": namespace}}
                ],
                "current-context": "stub",
            }
        )

    # ---- request handling ------------------------------------------------
    def _status(self, h, code: int, reason: str, message: str) -> None:
        h._send(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code})

    def _handle(self, h, method: str) -> None:
        url = urlparse(h.path)
        path = url.path.rstrip("/") or "/"
        query = parse_qs(url.query)
        with self._lock:
            self.requests.append(f"{method} {h.path}")
        body = h._body() if method in ("POST", "PUT", "PATCH") else None

        if method == "GET" and path == "/version":
            return h._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                                 "platform": "linux/amd64", "goVersion": "go1.24"})
        if method == "GET" and path == "/api":
            return h._send(200, {"kind": "APIVersions", "versions": ["v1"],
                                 "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
        if method == "GET" and path == "/apis":
            groups: dict[str, list[str]] = {}
            for gv in RESOURCES:
                if "/" in gv:
                    g, v = gv.split("/")
                    groups.setdefault(g, []).append(v)
            return h._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
                for g, vs in groups.items()]})
        gv = None
        if path == "/api/v1":
            gv = "v1"
        elif path.startswith("/apis/") and path.count("/") == 3:
            gv = path[len("/apis/"):]
        if method == "GET" and gv is not None:
            if gv not in RESOURCES:
                return self._status(h, 404, "NotFound", f"no group version {gv}")
            return h._send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
                {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                for plural, kind, namespaced in RESOURCES[gv]]})

        m = _PATH.match(path)
        if not m:
            return self._status(h, 404, "NotFound", f"stub: unknown path {path}")
        gv = m.group("core") or f"{m.group('group')}/{m.group('version')}"
        kinds = {plural: kind for plural, kind, _ in RESOURCES.get(gv, [])}
        plural, name, ns = m.group("plural"), m.group("name"), m.group("ns") or ""
        if plural not in kinds:
            return self._status(h, 404, "NotFound", f"stub: unknown resource {gv} {plural}")
        key = (gv, plural, ns, name)

        with self._lock:
            if method == "GET" and name is None:
                items = [copy.deepcopy(o) for (g, p, n, _), o in self.store.items()
                         if g == gv and p == plural and (not ns or n == ns)]
                sel = (query.get("labelSelector") or [""])[0]
                if sel:
                    want = dict(kv.split("=", 1) for kv in sel.split(",") if "=" in kv)
                    items = [o for o in items
                             if all((o.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in want.items())]
                return h._send(200, {"kind": kinds[plural] + "List", "apiVersion": gv,
                                     "metadata": {"resourceVersion": str(self._rv)}, "items": items})
            if method == "GET":
                if key in self.store:
                    return h._send(200, self.store[key])
                return self._status(h, 404, "NotFound", f'{plural} "{name}" not found')
            if method == "POST":
                obj = copy.deepcopy(body)
                meta = obj.setdefault("metadata", {})
                name = meta.get("name")
                key = (gv, plural, ns, name)
                if key in self.store:
                    return self._status(h, 409, "AlreadyExists", f'{plural} "{name}" already exists')
                if ns:
                    meta.setdefault("namespace", ns)
                self._rv += 1
                meta.update({"uid": str(uuid.uuid4()), "resourceVersion": str(self._rv),
                             "creationTimestamp": _now()})
                self.store[key] = obj
                if not (gv == "v1" and plural == "secrets" and (meta.get("labels") or {}).get("owner") == "helm"):
                    self.created.append(copy.deepcopy(body))
                return h._send(201, obj)
            if method in ("PUT", "PATCH"):
                if key not in self.store:
                    return self._status(h, 404, "NotFound", f'{plural} "{name}" not found')
                if method == "PUT":
                    obj = copy.deepcopy(body)
                else:  # merge patch is enough for what Helm sends here
                    obj = copy.deepcopy(self.store[key])
                    obj.update(body or {})
                self._rv += 1
                obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
                self.store[key] = obj
                return h._send(200, obj)
            if method == "DELETE":
                self.store.pop(key, None)
                return h._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
        return self._status(h, 405, "MethodNotAllowed", method)
