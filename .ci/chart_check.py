"""Checks of the rendered Helm chart and of examples/, run by .ci/chart-check.

1. Every rendered document, every example Secret and Pod and the chart's CRD validate against the
   Kubernetes JSON schemas bundled in kubernetes-validate (offline, strict: unknown fields fail),
   for the oldest supported, the compiled-against and the newest Kubernetes version.
   The ServiceMonitor (a Prometheus Operator CRD, no bundled schema) gets structural checks.
2. Every OAuthToken in examples/ validates against the CRD's openAPIV3Schema (jsonschema).
3. Policy: RBAC is exactly the allowed set, in the allowed scope; the ClusterRoles aggregated
   into the built-in admin/edit/view roles (rbac.aggregateClusterRoles) grant exactly OAuthToken
   access, carry exactly their aggregation labels and are bound to nobody; the pod meets the
   "restricted" Pod Security Standard; the command line uses only the operator's flags.

Usage: chart_check.py --release-namespace NS --default FILE --namespaced FILE
                      --namespaced-values FILE --namespaced-unaggregated FILE
                      --crd FILE --examples DIR
Exits non-zero on the first category of failure, after printing every failure found.
"""

import argparse
import glob
import json
import os
import sys
from collections import Counter, defaultdict

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSIONS = ["1.25", "1.33", "1.37"]

CHART_KINDS = {
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
        if "hostPath" in volume:
            fail(f"{origin}: hostPath volume {volume['name']}")
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
        get = (container.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path or get.get("port") != "http":
            fail(f"{where}: {probe} must GET {path} on port http, is {get}")

    resources = container.get("resources") or {}
    for kind, keys in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
        for key in keys:
            if key not in (resources.get(kind) or {}):
                fail(f"{where}: resources.{kind}.{key} not set")
    return dep


def check_render(path, release_ns, values, origin):
    docs = load_all(path)
    kinds = Counter(d["kind"] for d in docs)
    for kind in kinds:
        if kind not in CHART_KINDS:
            fail(f"{origin}: unexpected kind {kind}")
    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            if d["metadata"].get("namespace") is None:
                fail(f"{origin}: {name_of(d)} has no namespace")
        if d["kind"] == "ServiceMonitor":
            check_service_monitor(d, [s for s in docs if s["kind"] == "Service"], origin)
        else:
            validate_kubernetes(d, origin)

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
    if kinds["Service"] != 1:
        fail(f"{origin}: expected one (metrics) Service, got {kinds['Service']}")

    with open(path, "rb") as f:
        data = f.read()
    size = (len(data), data.count(b"\n"))
    return docs, table, size


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


# --- main ------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--release-namespace", required=True)
    parser.add_argument("--default", required=True)
    parser.add_argument("--namespaced", required=True)
    parser.add_argument("--namespaced-values", required=True)
    parser.add_argument("--namespaced-unaggregated", required=True,
                        help="render of --namespaced-values plus rbac.aggregateClusterRoles=false")
    parser.add_argument("--crd", required=True)
    parser.add_argument("--examples", required=True)
    args = parser.parse_args()

    with open(args.namespaced_values) as f:
        namespaced_values = yaml.safe_load(f)

    print(f"kubernetes-validate {kubernetes_validate.__version__}, strict, against Kubernetes "
          + ", ".join(KUBERNETES_VERSIONS))
    unaggregated_values = dict(namespaced_values)
    unaggregated_values["rbac"] = {**(namespaced_values.get("rbac") or {}),
                                   "aggregateClusterRoles": False}
    renders = [
        ("default", args.default, {}),
        ("namespaced", args.namespaced, namespaced_values),
        ("namespaced, rbac.aggregateClusterRoles=false", args.namespaced_unaggregated,
         unaggregated_values),
    ]
    tables = {}
    for label, path, values in renders:
        docs, table, (size, lines) = check_render(path, args.release_namespace, values, label)
        kinds = Counter(d["kind"] for d in docs)
        print(f"{label} render: {size} bytes, {lines} lines, {len(docs)} objects: "
              + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
        tables[label] = table

    check_examples(args.examples, args.crd)

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
