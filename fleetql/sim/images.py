"""The container images a kubelet reports in a node's ``status.images``.

A real node lists every image its container runtime holds (up to 50), each with its repo digest
and tags, largest first. That list is most of a Node's bytes, so without it a simulated NodeList
would be less than half the size of a real one and benchmarks would flatter the poller. Which
images a node holds is derived from a hash of its name: the same node always lists the same ones.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

__all__ = ["node_images"]

# (repository, tag, size in bytes) of images on every node; kube-proxy's tag is the node's version.
_SYSTEM = (
    ("registry.k8s.io/kube-proxy", "", 28_388_437),
    ("registry.k8s.io/pause", "3.9", 321_520),
    ("docker.io/calico/node", "v3.26.4", 92_358_102),
    ("docker.io/calico/cni", "v3.26.4", 93_401_544),
    ("docker.io/calico/pod2daemon-flexvol", "v3.26.4", 7_318_823),
    ("registry.k8s.io/sig-storage/csi-node-driver-registrar", "v2.9.0", 10_651_287),
    ("registry.k8s.io/sig-storage/livenessprobe", "v2.11.0", 9_304_214),
    ("quay.io/prometheus/node-exporter", "v1.7.0", 11_735_629),
    ("cr.fluentbit.io/fluent/fluent-bit", "2.2.2", 34_158_319),
)
# Images of pods that run on some nodes only.
_PLACED = (
    ("registry.k8s.io/coredns/coredns", "v1.10.1", 16_190_758),
    ("registry.k8s.io/metrics-server/metrics-server", "v0.6.4", 30_013_285),
    ("registry.k8s.io/ingress-nginx/controller", "v1.9.5", 107_463_892),
    ("quay.io/jetstack/cert-manager-controller", "v1.13.3", 19_853_104),
    ("registry.k8s.io/sig-storage/csi-provisioner", "v3.6.2", 28_746_177),
    ("ghcr.io/external-secrets/external-secrets", "v0.9.11", 27_560_911),
)
_APP_REGISTRY = "europe-west1-docker.pkg.dev/acme-platform-prod/services"
_APPS = (
    "checkout-service",
    "payments-api",
    "inventory-sync",
    "search-indexer",
    "notification-worker",
    "ledger-reconciler",
    "user-profile-api",
    "pricing-engine",
    "recommendation-service",
    "shipping-quotes",
    "fraud-scoring",
    "catalog-api",
    "cart-service",
    "auth-gateway",
    "image-resizer",
    "reporting-batch",
)
# Two releases of each application: a node that ran the older one keeps its image until GC.
_RELEASES = ("v2.14.0", "v2.14.1")


def node_images(node_name: str, kubelet_version: str) -> list[dict[str, Any]]:
    """The ``status.images`` of ``node_name``: about 20 images, largest first, as kubelet sorts."""
    catalog = _catalog(kubelet_version)
    # One byte per catalog image decides whether this node holds it (blake2b gives up to 64).
    draws = hashlib.blake2b(node_name.encode(), digest_size=len(catalog)).digest()
    return [image for (share, image), draw in zip(catalog, draws, strict=True) if draw < share]


@functools.lru_cache(maxsize=16)
def _catalog(kubelet_version: str) -> tuple[tuple[int, dict[str, Any]], ...]:
    """Every image a node may hold, largest first, each with the share of nodes (of 256) that
    hold it; rendered once per Kubernetes version and shared by every node's document."""
    images: list[tuple[int, str, tuple[str, ...], int]] = [
        (256, repo, (tag or kubelet_version,), size) for repo, tag, size in _SYSTEM
    ]
    # About a third of the nodes hold each placed image and each application release.
    images += [(85, repo, (tag,), size) for repo, tag, size in _PLACED]
    for app in _APPS:
        for release in _RELEASES:
            seed = hashlib.sha256(f"{app}:{release}".encode()).hexdigest()
            size = 40_000_000 + int(seed[:8], 16) % 350_000_000
            # CI pushes each release under its version and its commit.
            images.append((88, f"{_APP_REGISTRY}/{app}", (release, f"sha-{seed[-7:]}"), size))
    images.sort(key=lambda image: image[3], reverse=True)
    catalog: list[tuple[int, dict[str, Any]]] = []
    for share, repository, tags, size in images:
        digest = hashlib.sha256(f"{repository}:{tags[0]}".encode()).hexdigest()
        names = [f"{repository}@sha256:{digest}", *(f"{repository}:{tag}" for tag in tags)]
        catalog.append((share, {"names": names, "sizeBytes": size}))
    return tuple(catalog)
