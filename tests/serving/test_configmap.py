"""`slimserve evaluate --configmap NS/NAME` patches the ConfigMap the operator reads the report from."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from slimserve.cli.evaluate import patch_configmap
from slimserve.errors import InvalidInput


def test_report_lands_in_the_configmap_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str, str, dict[str, object]]] = []

    class Api(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.command, self.path, self.headers["Content-Type"], body))
            answer = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "r"}, **body}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        report = json.dumps({"decision": "Promoted"})
        patch_configmap("models/digits-report-0", report)
    finally:
        server.shutdown()
    method, path, content_type, body = seen[0]
    assert (method, path) == ("PATCH", "/api/v1/namespaces/models/configmaps/digits-report-0")
    assert "merge-patch" in content_type
    assert body == {"data": {"report.json": report}}


def test_configmap_reference_needs_namespace_and_name() -> None:
    with pytest.raises(InvalidInput, match="NAMESPACE/NAME"):
        patch_configmap("just-a-name", "{}")
