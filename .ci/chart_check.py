"""Checks of the rendered Helm chart and of examples/, run by .ci/chart-check.

1. Every rendered document, every example Secret and Pod and the chart's CRD validate against the
   Kubernetes JSON schemas bundled in kubernetes-validate (offline, strict: unknown fields fail),
   for the oldest supported, the compiled-against and the newest Kubernetes version.
   The ServiceMonitor and the PrometheusRule (Prometheus Operator CRDs, no bundled schema) get
   structural checks (the PrometheusRule a strict schema of its spec); the PrometheusRule's
   groups are written out for `promtool check rules` and `promtool test rules`. The rendered CRD
   is the generated crds/oauthtoken.yaml; the Grafana dashboard parses and queries only the
   operator's metrics (and all of them).
2. Every OAuthToken in examples/ validates against the CRD's openAPIV3Schema (jsonschema).
3. Policy: RBAC is exactly the allowed set, in the allowed scope; the ClusterRoles aggregated
   into the built-in admin/edit/view roles (rbac.aggregateClusterRoles) grant exactly OAuthToken
   access, carry exactly their aggregation labels and are bound to nobody; the pod meets the
   "restricted" Pod Security Standard; the command line uses only the operator's flags; every
   value (image digest, probes, volumes, env, topology spread, ...) shows up where it should.

Usage: chart_check.py --chart DIR --release-namespace NS --crd FILE --examples DIR
                      --render LABEL RENDER [VALUES...] [--render ...]
                      [--promtool PROMTOOL --rule-tests FILE]
Each --render names a `helm template` output and the values files it was rendered with, in
order; they are merged over the chart's values.yaml as Helm merges them.
Exits non-zero after printing every failure found.
"""

import argparse
import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSIONS = ["1.25", "1.33", "1.37"]

CHART_KINDS = {
    "CustomResourceDefinition",
    "ConfigMap",
    "PrometheusRule",
    "Deployment",
    "ServiceAccount",
    "Service",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "PodDisruptionBudget",
    "ServiceMonitor",
}

# (apiGroup, resource) -> verbs. Leases are allowed only in the release namespace.
WATCH_RULES = {
    ("oauth-token-operator.io", "oauthtokens"): {"get", "list", "watch"},
    ("oauth-token-operator.io", "oauthtokens/status"): {"get", "patch", "update"},
    ("", "secrets"): {"get", "list", "watch", "create", "update", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
LEASE_RULES = {
    ("coordination.k8s.io", "leases"): {"get", "create", "update", "patch"},
}

# The ClusterRoles aggregated into the built-in user-facing roles (rbac.aggregateClusterRoles),
# by name suffix (after the release's full name): their rules and their aggregation labels.
# Editing an OAuthToken is as strong as reading the namespace's Secrets, so read-write goes only
# to admin and edit (which read Secrets already); view gets read-only.
AGGREGATE_PREFIX = "rbac.authorization.k8s.io/aggregate-to-"
AGGREGATED_ROLES = {
    "edit": (
        {
            ("oauth-token-operator.io", "oauthtokens"): {
                "get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
            },
        },
        {"admin", "edit"},
    ),
    "view": (
        {
            ("oauth-token-operator.io", "oauthtokens"): {"get", "list", "watch"},
            ("oauth-token-operator.io", "oauthtokens/status"): {"get", "list", "watch"},
        },
        {"admin", "edit", "view"},
    ),
}

# The metrics the operator exports (the README's "Metrics and health" table): the PrometheusRule
# and the dashboard may query these and nothing else. Histograms also have _bucket/_sum/_count.
METRICS = {
    "oauth_token_operator_build_info",
    "oauth_token_operator_leader",
    "oauth_token_operator_ready",
    "oauth_token_operator_reauthorization_required",
    "oauth_token_operator_access_token_expiry_timestamp_seconds",
    "oauth_token_operator_refresh_token_expiry_timestamp_seconds",
    "oauth_token_operator_refresh_token_expiring",
    "oauth_token_operator_last_successful_refresh_timestamp_seconds",
    "oauth_token_operator_next_refresh_timestamp_seconds",
    "oauth_token_operator_refresh_attempts_total",
    "oauth_token_operator_refresh_duration_seconds",
    "oauth_token_operator_token_endpoint_responses_total",
    "oauth_token_operator_reconcile_errors_total",
    "oauth_token_operator_kube_api_requests_total",
    "oauth_token_operator_refreshes_deferred_total",
}
HISTOGRAMS = {"oauth_token_operator_refresh_duration_seconds"}
# Per-token series: labelled with the OAuthToken's namespace and name.
PER_TOKEN = {
    "oauth_token_operator_ready",
    "oauth_token_operator_reauthorization_required",
    "oauth_token_operator_access_token_expiry_timestamp_seconds",
    "oauth_token_operator_refresh_token_expiry_timestamp_seconds",
    "oauth_token_operator_refresh_token_expiring",
    "oauth_token_operator_last_successful_refresh_timestamp_seconds",
    "oauth_token_operator_next_refresh_timestamp_seconds",
}
ALERTS = {
    # values key -> alert name
    "reauthorizationRequired": "OAuthTokenReauthorizationRequired",
    "accessTokenExpiring": "OAuthTokenAccessTokenExpiring",
    "refreshTokenExpiring": "OAuthTokenRefreshTokenExpiring",
    "noLeader": "OAuthTokenOperatorNoLeader",
    "operatorDown": "OAuthTokenOperatorDown",
}
DASHBOARD_FILE = "oauth-token-operator.json"

# The PrometheusRule's spec as the monitoring.coreos.com/v1 CRD defines it (the fields the chart
# may use; unknown fields fail, as the API server would prune them).
PROM_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
PROMETHEUS_RULE_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "rules"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": PROM_DURATION},
                    "query_offset": {"type": "string", "pattern": PROM_DURATION},
                    "limit": {"type": "integer"},
                    "partial_response_strategy": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "rules": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["expr"],
                            "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                            "properties": {
                                "alert": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                                "record": {"type": "string"},
                                "expr": {"type": ["string", "integer"]},
                                "for": {"type": "string", "pattern": PROM_DURATION},
                                "keep_firing_for": {"type": "string", "pattern": PROM_DURATION},
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    },
}

# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}

# The operator's `run` command line (flags that take a value, and switches).
VALUE_FLAGS = {
    "--namespace",
    "--log-format",
    "--log-level",
    "--http-addr",
    "--leader-election-namespace",
    "--leader-election-lease-name",
    "--token-request-timeout",
}
SWITCHES = {"--allow-insecure-http", "--no-leader-election"}

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name_of(doc):
    meta = doc.get("metadata", {})
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


# --- 1. Kubernetes schemas -------------------------------------------------------------------


def validate_kubernetes(doc, origin):
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            fail(f"{origin}: {name_of(doc)} invalid for Kubernetes {version} at {path}: {e.message}")
            return
        except kubernetes_validate.SchemaNotFoundError:
            fail(f"{origin}: {name_of(doc)}: no Kubernetes {version} schema for {doc['apiVersion']}")
            return


def check_service_monitor(doc, services, origin):
    """No bundled schema: check the fields the Prometheus Operator needs."""
    spec = doc.get("spec") or {}
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(f"{origin}: ServiceMonitor apiVersion is {doc.get('apiVersion')}")
    if not doc.get("metadata", {}).get("name"):
        fail(f"{origin}: ServiceMonitor without a name")
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    endpoints = spec.get("endpoints") or []
    if not selector or not endpoints:
        fail(f"{origin}: ServiceMonitor needs spec.selector.matchLabels and spec.endpoints")
        return
    matched = [
        s
        for s in services
        if all(s["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
    ]
    if len(matched) != 1:
        fail(f"{origin}: ServiceMonitor selects {len(matched)} Services, expected 1")
        return
    ports = {p.get("name") for p in matched[0]["spec"]["ports"]}
    for endpoint in endpoints:
        if endpoint.get("port") not in ports:
            fail(f"{origin}: ServiceMonitor endpoint port {endpoint.get('port')} not in {ports}")
        if endpoint.get("path") != "/metrics":
            fail(f"{origin}: ServiceMonitor endpoint path {endpoint.get('path')}")
    namespaces = (spec.get("namespaceSelector") or {}).get("matchNames") or []
    if namespaces != [matched[0]["metadata"]["namespace"]]:
        fail(f"{origin}: ServiceMonitor namespaceSelector {namespaces}")
    for endpoint in endpoints:
        # The per-token series' own `namespace` label must survive the scrape (not become
        # exported_namespace): the alerts and the dashboard select on it.
        if endpoint.get("honorLabels") is not True:
            fail(f"{origin}: ServiceMonitor endpoint without honorLabels: true")


def metric_names(expr):
    """Names of oauth_token_operator_* series an expression selects (histogram suffixes
    stripped)."""
    names = set()
    for name in re.findall(r"\b(oauth_token_operator_[a-z0-9_]+)", expr):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
                name = name[: -len(suffix)]
        names.add(name)
    return names


def check_prometheus_rule(doc, values, release_ns, service_name, origin):
    """The PrometheusRule: the CRD's spec schema, the alerts the values enable, the operator's
    metrics only, and selectors on the job the ServiceMonitor produces. Returns the spec."""
    settings = values["prometheusRule"]
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(f"{origin}: PrometheusRule apiVersion is {doc.get('apiVersion')}")
    meta = doc.get("metadata") or {}
    if set(meta) - {"name", "namespace", "labels", "annotations"}:
        fail(f"{origin}: PrometheusRule metadata has {sorted(meta)}")
    if meta.get("namespace") != (settings["namespace"] or release_ns):
        fail(f"{origin}: PrometheusRule in namespace {meta.get('namespace')}")
    for key, value in settings["additionalLabels"].items():
        if (meta.get("labels") or {}).get(key) != value:
            fail(f"{origin}: PrometheusRule lacks the label {key}={value}")
    if (meta.get("annotations") or {}) != settings["annotations"]:
        fail(f"{origin}: PrometheusRule annotations {meta.get('annotations')}")
    spec = doc.get("spec") or {}
    for error in jsonschema.Draft7Validator(PROMETHEUS_RULE_SPEC).iter_errors(spec):
        where = ".".join(str(p) for p in error.path)
        fail(f"{origin}: PrometheusRule spec.{where}: {error.message}")
    rules = [r for g in spec.get("groups") or [] for r in g.get("rules") or []]
    by_name = {r.get("alert"): r for r in rules}
    job = settings["job"] or service_name
    expected = {
        name for key, name in ALERTS.items()
        if settings["alerts"][key]["enabled"]
        and (key != "noLeader" or values["leaderElection"]["enabled"])
    }
    if set(by_name) != expected:
        fail(f"{origin}: PrometheusRule alerts {sorted(by_name)}, expected {sorted(expected)}")
    for key, name in ALERTS.items():
        rule = by_name.get(name)
        if rule is None:
            continue
        alert = settings["alerts"][key]
        expr = str(rule["expr"])
        unknown = metric_names(expr) - METRICS
        if unknown:
            fail(f"{origin}: {name} queries unknown metrics {sorted(unknown)}")
        for selector in re.findall(r"\{([^}]*)\}", expr):
            if f'job="{job}"' not in selector:
                fail(f"{origin}: {name}: selector {{{selector}}} does not select job {job}")
        if rule.get("for") != alert["for"]:
            fail(f"{origin}: {name} for {rule.get('for')}, expected {alert['for']}")
        labels = rule.get("labels") or {}
        if labels != {**settings["alertLabels"], "severity": alert["severity"]}:
            fail(f"{origin}: {name} labels {labels}")
        if "thresholdSeconds" in alert and f"< {alert['thresholdSeconds']}" not in expr:
            fail(f"{origin}: {name} does not compare with thresholdSeconds {alert['thresholdSeconds']}")
        annotations = rule.get("annotations") or {}
        if not annotations.get("summary") or not annotations.get("description"):
            fail(f"{origin}: {name} lacks a summary or description")
        if metric_names(expr) & PER_TOKEN:
            if "by (namespace, name)" not in expr:
                fail(f"{origin}: {name} does not keep the OAuthToken's namespace and name")
            command = "kubectl describe oauthtoken -n {{ $labels.namespace }} {{ $labels.name }}"
            if command not in annotations.get("description", ""):
                fail(f"{origin}: {name}'s description does not say `{command}`")
        elif f'namespace="{release_ns}"' not in expr:
            fail(f"{origin}: {name} does not select the release namespace {release_ns}")
    return spec


def check_dashboard(doc, values, release_ns, origin):
    """The Grafana dashboard ConfigMap: the sidecar label, namespace, annotations, and a
    dashboard that parses and queries the operator's metrics only (every one of them)."""
    settings = values["grafanaDashboard"]
    meta = doc["metadata"]
    if meta.get("namespace") != (settings["namespace"] or release_ns):
        fail(f"{origin}: dashboard ConfigMap in namespace {meta.get('namespace')}")
    labels = meta.get("labels") or {}
    for key, value in {settings["label"]: settings["labelValue"], **settings["additionalLabels"]}.items():
        if labels.get(key) != value:
            fail(f"{origin}: dashboard ConfigMap lacks the label {key}={value!r}")
    if (meta.get("annotations") or {}) != settings["annotations"]:
        fail(f"{origin}: dashboard ConfigMap annotations {meta.get('annotations')}")
    data = doc.get("data") or {}
    if list(data) != [DASHBOARD_FILE]:
        fail(f"{origin}: dashboard ConfigMap data keys {list(data)}, expected [{DASHBOARD_FILE}]")
        return
    try:
        dashboard = json.loads(data[DASHBOARD_FILE])
    except json.JSONDecodeError as e:
        fail(f"{origin}: the dashboard is not JSON: {e}")
        return
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in dashboard:
            fail(f"{origin}: the dashboard has no {key}")
    used, queries = set(), 0

    def walk(value):
        nonlocal queries
        if isinstance(value, dict):
            for key, sub in value.items():
                if key in ("expr", "query", "definition") and isinstance(sub, str):
                    queries += key == "expr"
                    used.update(metric_names(sub))
                else:
                    walk(sub)
        elif isinstance(value, list):
            for sub in value:
                walk(sub)

    walk(dashboard)
    if used - METRICS:
        fail(f"{origin}: the dashboard queries unknown metrics {sorted(used - METRICS)}")
    if METRICS - used:
        fail(f"{origin}: the dashboard does not show {sorted(METRICS - used)}")
    ids = [p.get("id") for p in dashboard.get("panels") or []]
    if len(ids) != len(set(ids)):
        fail(f"{origin}: the dashboard's panel ids are not unique")
    for panel in dashboard.get("panels") or []:
        if panel.get("type") != "row" and not panel.get("targets"):
            fail(f"{origin}: dashboard panel {panel.get('title')!r} has no query")
    print(f"{origin}: dashboard {dashboard.get('title')!r}: {len(ids)} panels, {queries} queries, "
          f"{len(used)} metrics")


def check_crd(doc, values, generated, origin):
    """The rendered CRD is the generated one, with the chart's labels and the keep annotation
    exactly when crds.keep."""
    for key in ("apiVersion", "kind", "spec"):
        if doc.get(key) != generated.get(key):
            fail(f"{origin}: the rendered CRD's {key} differs from crds/oauthtoken.yaml")
    if doc["metadata"].get("name") != generated["metadata"]["name"]:
        fail(f"{origin}: the rendered CRD is named {doc['metadata'].get('name')}")
    annotations = doc["metadata"].get("annotations") or {}
    keep = {"helm.sh/resource-policy": "keep"} if values["crds"]["keep"] else {}
    if annotations != keep:
        fail(f"{origin}: CRD annotations {annotations}, expected {keep} (crds.keep)")


# --- 3. Policy -------------------------------------------------------------------------------


def granted(role):
    """Set of (group, resource, verb, resourceName or None) a Role or ClusterRole grants."""
    out = set()
    for rule in role.get("rules") or []:
        if rule.get("nonResourceURLs"):
            fail(f"{name_of(role)} grants nonResourceURLs {rule['nonResourceURLs']}")
        names = rule.get("resourceNames") or [None]
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    for name in names:
                        out.add((group, resource, verb, name))
    if role.get("aggregationRule"):
        fail(f"{name_of(role)} has an aggregationRule")
    return out


def expect_grants(role, allowed, origin):
    grants = granted(role)
    for group, resource, verb, _ in grants:
        if "*" in (group, resource, verb):
            fail(f"{origin}: {name_of(role)} grants a wildcard: {group}/{resource} {verb}")
        elif verb not in allowed.get((group, resource), set()):
            fail(f"{origin}: {name_of(role)} grants {verb} on {group or 'core'}/{resource}: not allowed")
    have = {(g, r, v) for g, r, v, _ in grants}
    for (group, resource), verbs in allowed.items():
        for verb in verbs:
            if (group, resource, verb) not in have:
                fail(f"{origin}: {name_of(role)} lacks {verb} on {group or 'core'}/{resource}")
    return grants


def aggregated_to(role):
    """The built-in roles a role's aggregation labels name, e.g. {"admin", "edit"} (whatever the
    label values; check_rbac requires "true")."""
    labels = role["metadata"].get("labels") or {}
    return {k[len(AGGREGATE_PREFIX):] for k in labels if k.startswith(AGGREGATE_PREFIX)}


def role_label(role):
    """Role name for the RBAC table, with the built-in roles it is aggregated into."""
    into = aggregated_to(role)
    return name_of(role) + (f" (into {', '.join(sorted(into))})" if into else "")


def check_aggregated(cluster_roles, fullname, enabled, origin):
    """The aggregated ClusterRoles: present exactly when enabled, each with exactly its rules and
    aggregation labels. Returns them and their table rows."""
    found, table = [], []
    for suffix, (rules, into) in sorted(AGGREGATED_ROLES.items()):
        name = f"{fullname}-{suffix}"
        role = cluster_roles.get(name)
        if not enabled:
            if role is not None:
                fail(f"{origin}: {name_of(role)} rendered with rbac.aggregateClusterRoles false")
            continue
        if role is None:
            fail(f"{origin}: no aggregated ClusterRole {name} (rbac.aggregateClusterRoles is on)")
            continue
        found.append(role)
        if aggregated_to(role) != into:
            fail(f"{origin}: {name_of(role)} is aggregated into {sorted(aggregated_to(role))}, "
                 f"expected {sorted(into)}")
        for row in sorted(expect_grants(role, rules, origin)):
            table.append((role_label(role),) + row)
    return found, table


def check_rbac(docs, release_ns, watch_namespaces, sa_name, fullname, aggregate, origin):
    by_kind = defaultdict(list)
    for d in docs:
        by_kind[d["kind"]].append(d)
    roles = {(r["metadata"].get("namespace"), r["metadata"]["name"]): r for r in by_kind["Role"]}
    cluster_roles = {r["metadata"]["name"]: r for r in by_kind["ClusterRole"]}

    for role in by_kind["Role"] + by_kind["ClusterRole"]:
        for key, value in (role["metadata"].get("labels") or {}).items():
            if key.startswith(AGGREGATE_PREFIX) and value != "true":
                fail(f"{origin}: {name_of(role)} label {key}={value!r}, expected \"true\"")

    # Aggregated ClusterRoles first; everything below is about the operator's own roles.
    aggregated, table = check_aggregated(cluster_roles, fullname, aggregate, origin)
    operator_cluster_roles = [r for r in by_kind["ClusterRole"] if r not in aggregated]
    for role in by_kind["Role"] + operator_cluster_roles:
        if aggregated_to(role):
            fail(f"{origin}: {name_of(role)} carries aggregation labels {sorted(aggregated_to(role))}")

    lease_roles = [r for r in by_kind["Role"] if any(k[1] == "leases" for k in granted(r))]
    if len(lease_roles) != 1 or lease_roles[0]["metadata"].get("namespace") != release_ns:
        fail(f"{origin}: expected exactly one Role for leases, in {release_ns}; got "
             f"{[name_of(r) for r in lease_roles]}")
    for role in lease_roles:
        for row in sorted(expect_grants(role, LEASE_RULES, origin)):
            table.append((name_of(role),) + row)
    for role in by_kind["ClusterRole"]:
        if any(k[1] == "leases" for k in granted(role)):
            fail(f"{origin}: {name_of(role)} grants leases cluster-wide")

    watch_roles = [r for r in by_kind["Role"] if r not in lease_roles]
    if watch_namespaces:
        if operator_cluster_roles or by_kind["ClusterRoleBinding"]:
            fail(f"{origin}: watchNamespaces set, but the render has ClusterRoles/Bindings for "
                 f"the operator")
        per_ns = Counter(r["metadata"].get("namespace") for r in watch_roles)
        if per_ns != Counter(watch_namespaces):
            fail(f"{origin}: Roles per namespace {dict(per_ns)}, expected one in each of {watch_namespaces}")
    else:
        if len(operator_cluster_roles) != 1 or len(by_kind["ClusterRoleBinding"]) != 1:
            fail(f"{origin}: expected one ClusterRole and one ClusterRoleBinding for the operator")
        if watch_roles:
            fail(f"{origin}: cluster-wide install has extra Roles {[name_of(r) for r in watch_roles]}")
    for role in watch_roles + operator_cluster_roles:
        for row in sorted(expect_grants(role, WATCH_RULES, origin)):
            table.append((name_of(role),) + row)

    # Every binding binds an existing role of this release to the operator's ServiceAccount.
    bound = Counter()
    for binding in by_kind["RoleBinding"] + by_kind["ClusterRoleBinding"]:
        ref = binding["roleRef"]
        ns = binding["metadata"].get("namespace")
        if ref["kind"] == "Role":
            target = roles.get((ns, ref["name"]))
        else:
            target = cluster_roles.get(ref["name"])
        if target is None:
            fail(f"{origin}: {name_of(binding)} refers to missing {ref['kind']} {ref['name']}")
        else:
            bound[id(target)] += 1
        subjects = binding.get("subjects") or []
        if subjects != [{"kind": "ServiceAccount", "name": sa_name, "namespace": release_ns}]:
            fail(f"{origin}: {name_of(binding)} subjects {subjects}")
    for role in by_kind["Role"] + operator_cluster_roles:
        if bound[id(role)] != 1:
            fail(f"{origin}: {name_of(role)} is bound {bound[id(role)]} times")
    # The aggregated roles are for people (through admin/edit/view): the operator's
    # ServiceAccount, or anyone else, must not be bound to them by the chart.
    for role in aggregated:
        if bound[id(role)]:
            fail(f"{origin}: aggregated {name_of(role)} is bound {bound[id(role)]} times; the "
                 f"operator's ServiceAccount must not hold it")
    return table


def check_restricted(pod_spec, origin):
    """The "restricted" Pod Security Standard, plus a read-only root filesystem."""
    psc = pod_spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            fail(f"{origin}: pod sets {field}")
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            fail(f"{origin}: volume {volume['name']} of type {sorted(kinds - RESTRICTED_VOLUMES)} "
                 f"is not allowed by the restricted Pod Security Standard")
    if psc.get("runAsNonRoot") is not True:
        fail(f"{origin}: pod securityContext.runAsNonRoot is not true")
    for field in ("runAsUser", "runAsGroup"):
        value = psc.get(field)
        if not isinstance(value, int) or value == 0:
            fail(f"{origin}: pod securityContext.{field} must be a non-zero number, is {value!r}")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        fail(f"{origin}: pod seccompProfile is not RuntimeDefault")
    containers = (pod_spec.get("containers") or []) + (pod_spec.get("initContainers") or [])
    for c in containers:
        where = f"{origin}: container {c['name']}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            fail(f"{where} is privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            fail(f"{where}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) in (0, None):
            fail(f"{where}: runAsUser is root or unset")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            fail(f"{where}: capabilities.drop lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            fail(f"{where}: adds capabilities {caps.get('add')}")
        if (sc.get("seccompProfile") or {}).get("type", "RuntimeDefault") != "RuntimeDefault":
            fail(f"{where}: seccompProfile is not RuntimeDefault")
        if "seccompProfile" not in sc:
            fail(f"{where}: no container-level seccompProfile")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                fail(f"{where}: hostPort {port['hostPort']}")


def check_deployment(docs, release_ns, values, origin):
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    if len(deployments) != 1:
        fail(f"{origin}: expected one Deployment, got {len(deployments)}")
        return None
    dep = deployments[0]
    pod = dep["spec"]["template"]["spec"]
    check_restricted(pod, origin)
    if pod.get("automountServiceAccountToken") is False:
        fail(f"{origin}: automountServiceAccountToken is false; the operator needs the API")
    [container] = pod["containers"]
    where = f"{origin}: container {container['name']}"

    args = container.get("args") or []
    if container.get("command"):
        fail(f"{where}: overrides the image ENTRYPOINT")
    if not args or args[0] != "run":
        fail(f"{where}: args must start with `run`, are {args}")
    extra = set(values.get("extraArgs") or [])
    flags = defaultdict(list)
    for arg in args[1:]:
        if arg in extra:
            continue
        flag, has_value, value = arg.partition("=")
        if flag in SWITCHES and not has_value:
            flags[flag].append(True)
        elif flag in VALUE_FLAGS and has_value and value:
            flags[flag].append(value)
        else:
            fail(f"{where}: argument {arg!r} is not part of the operator's command line")

    names = Counter(a.partition("=")[0] for a in args[1:] if a.startswith("--"))
    for flag, count in names.items():
        if count > 1 and flag != "--namespace":
            fail(f"{where}: {flag} given {count} times; the operator refuses repeated flags")
    extra_flags = {a.partition("=")[0] for a in extra}

    watch = values.get("watchNamespaces") or []
    if flags["--namespace"] != watch:
        fail(f"{where}: --namespace {flags['--namespace']}, expected {watch}")
    expect = {
        "--log-format": [values.get("logFormat", "json")],
        "--log-level": [values.get("logLevel", "info")],
        "--token-request-timeout": [values.get("tokenRequestTimeout", "30s")],
        "--http-addr": [f"0.0.0.0:{values.get('httpPort', 8080)}"],
        "--leader-election-namespace": [release_ns],
    }
    for flag, value in expect.items():
        if flag in extra_flags:
            value = []  # extraArgs replaces the chart's own flag
        if flags[flag] != value:
            fail(f"{where}: {flag} is {flags[flag]}, expected {value}")
    if bool(flags["--allow-insecure-http"]) != bool(values.get("allowInsecureHttp", False)):
        fail(f"{where}: --allow-insecure-http does not follow allowInsecureHttp")
    if flags["--no-leader-election"]:
        fail(f"{where}: leader election is off")

    env = {e["name"]: e for e in container.get("env") or []}
    for name, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        ref = (env.get(name, {}).get("valueFrom") or {}).get("fieldRef") or {}
        if ref.get("fieldPath") != path:
            fail(f"{where}: env {name} must come from the downward API ({path})")

    ports = {p["name"]: p for p in container.get("ports") or []}
    if "http" not in ports:
        fail(f"{where}: no port named http")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        rendered = container.get(probe) or {}
        get = rendered.get("httpGet") or {}
        if get.get("path") != path or get.get("port") != "http":
            fail(f"{where}: {probe} must GET {path} on port http, is {get}")
        timing = {k: v for k, v in rendered.items() if k != "httpGet"}
        if timing != values[probe]:
            fail(f"{where}: {probe} timing {timing}, the values say {values[probe]}")

    image = values["image"]
    if image.get("digest"):
        expected = f"{image['repository']}@{image['digest']}"
    else:
        expected = f"{image['repository']}:{image.get('tag') or values['_appVersion']}"
    if container.get("image") != expected:
        fail(f"{where}: image {container.get('image')!r}, expected {expected!r}")
    if dep["spec"].get("revisionHistoryLimit") != values["revisionHistoryLimit"]:
        fail(f"{origin}: revisionHistoryLimit {dep['spec'].get('revisionHistoryLimit')}, "
             f"expected {values['revisionHistoryLimit']}")
    for field, rendered, key in (
        ("envFrom", container.get("envFrom") or [], "extraEnvFrom"),
        ("volumeMounts", container.get("volumeMounts") or [], "extraVolumeMounts"),
        ("volumes", pod.get("volumes") or [], "extraVolumes"),
    ):
        if rendered != values[key]:
            fail(f"{where}: {field} {rendered}, expected {key} {values[key]}")
    extra_env = [e for e in container.get("env") or [] if e["name"] not in ("POD_NAME", "POD_NAMESPACE")]
    if extra_env != values["extraEnv"]:
        fail(f"{where}: env beyond POD_NAME/POD_NAMESPACE is {extra_env}, expected {values['extraEnv']}")
    mounts = {m["name"] for m in container.get("volumeMounts") or []}
    volumes = {v["name"] for v in pod.get("volumes") or []}
    if not mounts <= volumes:
        fail(f"{where}: mounts volumes {sorted(mounts - volumes)} that the pod does not have")

    selector = dep["spec"]["selector"]["matchLabels"]
    spread = pod.get("topologySpreadConstraints") or []
    if len(spread) != len(values["topologySpreadConstraints"]):
        fail(f"{origin}: {len(spread)} topologySpreadConstraints, the values have "
             f"{len(values['topologySpreadConstraints'])}")
    for rendered, given in zip(spread, values["topologySpreadConstraints"]):
        expected = dict(given)
        expected.setdefault("labelSelector", {"matchLabels": selector})
        if rendered != expected:
            fail(f"{origin}: topologySpreadConstraint {rendered}, expected {expected}")

    resources = container.get("resources") or {}
    for kind, keys in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
        for key in keys:
            if key not in (resources.get(kind) or {}):
                fail(f"{where}: resources.{kind}.{key} not set")
    return dep


def check_render(path, release_ns, values, generated_crd, origin):
    docs = load_all(path)
    kinds = Counter(d["kind"] for d in docs)
    for kind in kinds:
        if kind not in CHART_KINDS:
            fail(f"{origin}: unexpected kind {kind}")
    services = [s for s in docs if s["kind"] == "Service"]
    rules = []
    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            if d["metadata"].get("namespace") is None:
                fail(f"{origin}: {name_of(d)} has no namespace")
        if d["kind"] == "ServiceMonitor":
            check_service_monitor(d, services, origin)
        elif d["kind"] == "PrometheusRule":
            service_name = services[0]["metadata"]["name"] if services else None
            rules.append(check_prometheus_rule(d, values, release_ns, service_name, origin))
        else:
            validate_kubernetes(d, origin)
            if d["kind"] == "CustomResourceDefinition":
                check_crd(d, values, generated_crd, origin)
            elif d["kind"] == "ConfigMap":
                check_dashboard(d, values, release_ns, origin)

    dep = check_deployment(docs, release_ns, values, origin)
    if dep:
        # For .ci/image-check, which runs the release binary with these arguments.
        container = dep["spec"]["template"]["spec"]["containers"][0]
        with open(os.path.splitext(path)[0] + ".args.json", "w") as f:
            json.dump(container.get("args") or [], f)
    sa_name = dep["spec"]["template"]["spec"]["serviceAccountName"] if dep else None
    fullname = dep["metadata"]["name"] if dep else None
    sas = [d for d in docs if d["kind"] == "ServiceAccount"]
    if [s["metadata"]["name"] for s in sas] != [sa_name]:
        fail(f"{origin}: ServiceAccounts {[name_of(s) for s in sas]}, the pod runs as {sa_name}")
    aggregate = (values.get("rbac") or {}).get("aggregateClusterRoles", True)
    table = check_rbac(docs, release_ns, values.get("watchNamespaces") or [], sa_name, fullname,
                       aggregate, origin)

    replicas = values.get("replicaCount", 1)
    if (kinds["PodDisruptionBudget"] == 1) != (replicas > 1):
        fail(f"{origin}: {kinds['PodDisruptionBudget']} PodDisruptionBudgets for {replicas} replicas")
    monitor = ((values.get("metrics") or {}).get("serviceMonitor") or {}).get("enabled", False)
    if kinds["ServiceMonitor"] != int(monitor):
        fail(f"{origin}: {kinds['ServiceMonitor']} ServiceMonitors, serviceMonitor.enabled={monitor}")
    for kind, enabled in (
        ("CustomResourceDefinition", values["crds"]["enabled"]),
        ("PrometheusRule", values["prometheusRule"]["enabled"]),
        ("ConfigMap", values["grafanaDashboard"]["enabled"]),
    ):
        if kinds[kind] != int(enabled):
            fail(f"{origin}: {kinds[kind]} {kind}, expected {int(enabled)}")
    if kinds["Service"] != 1:
        fail(f"{origin}: expected one (metrics) Service, got {kinds['Service']}")

    with open(path, "rb") as f:
        data = f.read()
    size = (len(data), data.count(b"\n"))
    return docs, table, size, rules


# --- 2. Examples -----------------------------------------------------------------------------


def check_examples(examples_dir, crd_path):
    [crd] = load_all(crd_path)
    validate_kubernetes(crd, crd_path)
    versions = {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}
    group = crd["spec"]["group"]
    count = Counter()
    files = sorted(glob.glob(os.path.join(examples_dir, "*.yaml")))
    if not files:
        fail(f"no examples in {examples_dir}")
    for path in files:
        for doc in load_all(path):
            count[doc["kind"]] += 1
            if doc["kind"] == crd["spec"]["names"]["kind"]:
                api_group, _, version = doc["apiVersion"].partition("/")
                if api_group != group or version not in versions:
                    fail(f"{path}: {name_of(doc)} has apiVersion {doc['apiVersion']}")
                    continue
                body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
                validator = jsonschema.Draft7Validator(versions[version])
                for error in validator.iter_errors(body):
                    where = ".".join(str(p) for p in error.path)
                    fail(f"{path}: {name_of(doc)} at {where}: {error.message}")
                unknown = unknown_fields(body, versions[version])
                for where in unknown:
                    fail(f"{path}: {name_of(doc)}: field {where} is not in the CRD (would be pruned)")
            else:
                validate_kubernetes(doc, path)
    print(f"examples: {len(files)} files, " + ", ".join(f"{n} {k}" for k, n in sorted(count.items())))


def unknown_fields(value, schema, where=""):
    """Fields the API server would prune: not in `properties` of a schema without
    additionalProperties or x-kubernetes-preserve-unknown-fields."""
    out = []
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, sub in value.items():
            if key in props:
                out += unknown_fields(sub, props[key], f"{where}.{key}")
            elif isinstance(additional, dict):
                out += unknown_fields(sub, additional, f"{where}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                out.append(f"{where}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += unknown_fields(item, schema["items"], f"{where}[{i}]")
    return out


# --- PrometheusRule with promtool -------------------------------------------------------------


def check_promtool(promtool, rules, rule_tests, tests_label, out_dir):
    """`promtool check rules` on each rendered PrometheusRule's groups (PromQL syntax, templates
    in annotations), and `promtool test rules` (alerts fire, or not, on synthetic series) on the
    rules of the render labelled tests_label."""
    tested = None
    for i, (label, spec) in enumerate(rules):
        path = os.path.join(out_dir, f"prometheus-rules-{i}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({"groups": spec.get("groups") or []}, f, sort_keys=False)
        result = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        print(f"promtool check rules ({label}): {result.stdout.strip()}")
        if result.returncode != 0:
            fail(f"promtool check rules {path} ({label}): {result.stderr.strip()}")
        if label == tests_label:
            tested = path
    if rule_tests:
        if tested is None:
            fail(f"no PrometheusRule in the render {tests_label!r} for the rule unit tests")
            return
        # The tests name the rule file prometheus-rules.yaml next to them.
        shutil.copy(tested, os.path.join(out_dir, "prometheus-rules.yaml"))
        tests = os.path.join(out_dir, os.path.basename(rule_tests))
        shutil.copy(rule_tests, tests)
        result = subprocess.run([promtool, "test", "rules", tests], capture_output=True, text=True)
        print(f"promtool test rules ({tests_label}): {result.stdout.strip()}")
        if result.returncode != 0:
            fail(f"promtool test rules {rule_tests}: {result.stdout.strip()} {result.stderr.strip()}")


# --- main ------------------------------------------------------------------------------------


def merge(base, override):
    """Helm's merge of a values file over the values so far: maps recursively, null deletes,
    anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chart", required=True)
    parser.add_argument("--release-namespace", required=True)
    parser.add_argument("--render", nargs="+", action="append", required=True,
                        metavar="LABEL RENDER [VALUES...]")
    parser.add_argument("--crd", required=True, help="the generated CRD (crds/oauthtoken.yaml)")
    parser.add_argument("--examples", required=True)
    parser.add_argument("--promtool", help="promtool binary for the PrometheusRule")
    parser.add_argument("--rule-tests", help="promtool rule unit tests")
    parser.add_argument("--rule-tests-render", help="label of the render the rule tests are for")
    args = parser.parse_args()

    with open(os.path.join(args.chart, "values.yaml")) as f:
        defaults = yaml.safe_load(f)
    with open(os.path.join(args.chart, "Chart.yaml")) as f:
        defaults["_appVersion"] = yaml.safe_load(f)["appVersion"]
    [generated_crd] = load_all(args.crd)

    print(f"kubernetes-validate {kubernetes_validate.__version__}, strict, against Kubernetes "
          + ", ".join(KUBERNETES_VERSIONS))
    tables, all_rules = {}, []
    for label, path, *values_files in args.render:
        values = defaults
        for values_file in values_files:
            with open(values_file) as f:
                values = merge(values, yaml.safe_load(f))
        docs, table, (size, lines), rules = check_render(
            path, args.release_namespace, values, generated_crd, label)
        kinds = Counter(d["kind"] for d in docs)
        print(f"{label} render: {size} bytes, {lines} lines, {len(docs)} objects: "
              + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
        tables[label] = table
        all_rules += [(label, spec) for spec in rules]

    check_examples(args.examples, args.crd)

    if args.promtool:
        check_promtool(args.promtool, all_rules, args.rule_tests, args.rule_tests_render,
                       os.path.dirname(args.render[0][1]))

    for label, table in tables.items():
        print(f"\nRBAC granted ({label} render):")
        grouped = defaultdict(set)
        for role, group, resource, verb, name in table:
            key = (role, group or "core", resource + (f" [{name}]" if name else ""))
            grouped[key].add(verb)
        width = max(len(r) for r, _, _ in grouped) if grouped else 10
        for (role, group, resource), verbs in sorted(grouped.items()):
            print(f"  {role:<{width}}  {group:<24} {resource:<40} {', '.join(sorted(verbs))}")

    if failures:
        print(f"\n{len(failures)} chart check(s) failed")
        return 1
    print("\nchart checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
