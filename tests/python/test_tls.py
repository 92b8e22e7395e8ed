"""TLS on both protocols with certificates made by openssl: HTTPS and gRPC
over TLS, mutual TLS enforced when a client CA is set, and a certificate
replaced on disk is picked up without a restart."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import grpc
import pytest
import requests
from tritonclient.grpc import service_pb2, service_pb2_grpc

from conftest import Server
from lifecycle_helpers import wait_for

MLP = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": [0.5] * 256}]}


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(dir: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=dir)


def make_cert(dir: Path, ca: str, name: str, san: str = "IP:127.0.0.1") -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=dir)
    (dir / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=dir)


def served_cn(addr: str, ca: Path) -> str:
    host, port = addr.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, int(port)), timeout=5) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
        subject = dict(item[0] for item in tls.getpeercert()["subject"])
        return subject["commonName"]


@pytest.fixture
def pki(tmp_path):
    make_ca(tmp_path, "ca")
    make_cert(tmp_path, "ca", "server")
    make_cert(tmp_path, "ca", "client")
    return tmp_path


def test_https_and_grpc_tls_with_reload(pki):
    server = Server("--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"))
    try:
        ca = str(pki / "ca.crt")
        response = requests.post(f"https://{server.http}/v2/models/mlp/infer", json=MLP, verify=ca, timeout=10)
        assert response.status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://{server.http}/v2/health/live", timeout=5)  # plain HTTP is refused
        credentials = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.crt").read_bytes())
        with grpc.secure_channel(server.grpc, credentials) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
        # Metrics stay plain (scraped inside the cluster).
        assert requests.get(f"http://{server.metrics}/metrics", timeout=10).status_code == 200

        assert served_cn(server.http, pki / "ca.crt") == "server"
        make_cert(pki, "ca", "renewed")
        (pki / "server.key").write_bytes((pki / "renewed.key").read_bytes())
        (pki / "server.crt").write_bytes((pki / "renewed.crt").read_bytes())
        wait_for(lambda: served_cn(server.http, pki / "ca.crt") == "renewed", 15, "the renewed certificate")
        # A broken file keeps the current certificate serving.
        (pki / "server.crt").write_text("not a certificate")
        time.sleep(3)
        assert served_cn(server.http, pki / "ca.crt") == "renewed"
    finally:
        assert server.stop() == 0


def test_mutual_tls_requires_a_client_certificate(pki):
    server = Server("--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
                    "--tls-client-ca", str(pki / "ca.crt"))
    try:
        ca = str(pki / "ca.crt")
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(f"https://{server.http}/v2/models/mlp/infer", json=MLP, verify=ca, timeout=10)
        ok = requests.post(f"https://{server.http}/v2/models/mlp/infer", json=MLP, verify=ca,
                           cert=(str(pki / "client.crt"), str(pki / "client.key")), timeout=10)
        assert ok.status_code == 200
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.crt").read_bytes(),
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.crt").read_bytes(),
        )
        with grpc.secure_channel(server.grpc, credentials) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready

        # A certificate from a CA the server does not trust is no better than none.
        make_ca(pki, "rogue-ca")
        make_cert(pki, "rogue-ca", "rogue")
        rogue = (str(pki / "rogue.crt"), str(pki / "rogue.key"))
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.post(f"https://{server.http}/v2/models/mlp/infer", json=MLP, verify=ca, cert=rogue, timeout=10)
        for key, chain in [(None, None), ((pki / "rogue.key").read_bytes(), (pki / "rogue.crt").read_bytes())]:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=(pki / "ca.crt").read_bytes(), private_key=key, certificate_chain=chain
            )
            with grpc.secure_channel(server.grpc, credentials) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        assert "rogue" not in server.log() or "certificate" in server.log()
    finally:
        assert server.stop() == 0


def test_unusable_tls_files_stop_start_up(pki):
    (pki / "bad.crt").write_text("garbage")
    with pytest.raises(RuntimeError) as raised:
        Server("--tls-cert", str(pki / "bad.crt"), "--tls-key", str(pki / "server.key"))
    assert "bad.crt" in str(raised.value)
