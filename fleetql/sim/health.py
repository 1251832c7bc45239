"""The plain-text bodies of /readyz, /livez and /healthz, as the apiserver writes them.

A passing check answers ``ok`` (no newline; ``?verbose`` lists the checks); a failing one answers
500 with the list of checks, the failed ones as ``[-]NAME failed: reason withheld``, whether or not
``verbose`` was asked for (k8s.io/apiserver/pkg/server/healthz).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CHECKS", "health_body"]

_POST_START_HOOKS = (
    "poststarthook/start-kube-apiserver-admission-initializer",
    "poststarthook/generic-apiserver-start-informers",
    "poststarthook/priority-and-fairness-config-consumer",
    "poststarthook/priority-and-fairness-filter",
    "poststarthook/storage-object-count-tracker-hook",
    "poststarthook/start-apiextensions-informers",
    "poststarthook/start-apiextensions-controllers",
    "poststarthook/crd-informer-synced",
    "poststarthook/start-service-ip-repair-controllers",
    "poststarthook/rbac/bootstrap-roles",
    "poststarthook/scheduling/bootstrap-system-priority-classes",
    "poststarthook/priority-and-fairness-config-producer",
    "poststarthook/start-system-namespaces-controller",
    "poststarthook/bootstrap-controller",
    "poststarthook/start-cluster-authentication-info-controller",
    "poststarthook/start-kube-apiserver-identity-lease-controller",
    "poststarthook/start-deprecated-kube-apiserver-identity-lease-garbage-collector",
    "poststarthook/start-kube-apiserver-identity-lease-garbage-collector",
    "poststarthook/start-legacy-token-tracking-controller",
    "poststarthook/start-kube-aggregator-informers",
    "poststarthook/apiservice-registration-controller",
    "poststarthook/apiservice-status-available-controller",
    "poststarthook/kube-apiserver-autoregistration",
    "autoregister-completion",
    "poststarthook/apiservice-openapi-controller",
    "poststarthook/apiservice-openapiv3-controller",
    "poststarthook/apiservice-discovery-controller",
)

# The checks each endpoint runs, in the order a v1.28 apiserver lists them.
CHECKS: dict[str, tuple[str, ...]] = {
    "readyz": (
        "ping",
        "log",
        "etcd",
        "etcd-readiness",
        "informer-sync",
        *_POST_START_HOOKS,
        "shutdown",
    ),
    "livez": ("ping", "log", "etcd", *_POST_START_HOOKS),
    "healthz": ("ping", "log", "etcd", *_POST_START_HOOKS),
}


def health_body(
    endpoint: str, *, failing: Sequence[str], verbose: bool, unhealthy_status: int = 500
) -> tuple[int, bytes]:
    """Status code and body of ``/<endpoint>`` when the checks named in ``failing`` fail.

    A failing name that is not one of the endpoint's checks is ignored, so ``failing=("shutdown",)``
    breaks /readyz but not /livez or /healthz, as a shutting-down apiserver does.
    """
    checks = CHECKS[endpoint]
    failed = [name for name in checks if name in failing]
    if not failed and not verbose:
        return 200, b"ok"
    lines = [
        f"[-]{name} failed: reason withheld" if name in failed else f"[+]{name} ok"
        for name in checks
    ]
    if failed:
        # http.Error appends the newline after the message.
        return unhealthy_status, ("\n".join(lines) + f"\n{endpoint} check failed\n").encode()
    return 200, ("\n".join(lines) + f"\n{endpoint} check passed\n").encode()
