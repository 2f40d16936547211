"""Replays the Dockerfile's `build` stage without a Docker engine, and checks the runtime stage.

The build stage's COPY steps copy from the repository into a staging directory (standing in for
WORKDIR), and its RUN steps run there with `sh -c`, exactly as written, with the stage's ARGs in
the environment: TARGETARCH is the architecture being replayed (--target-arch; default this
machine's), other ARGs take the value of a --build-arg NAME=VALUE, as with `docker build`, else
their defaults. The build stage must run on the build platform
(`FROM --platform=$BUILDPLATFORM`) and cross-compile for TARGETARCH, which is what this host-side
replay does too; with --target-arch arm64 on an amd64 machine its RUN steps install Debian's
cross toolchain on this machine (apt-get, as root). The staging directory's
`target` is a symlink to the repository's target/, so dependencies compiled once are reused.
Any instruction this replay does not understand fails it, so the replay cannot silently drift
from what `docker build` does.

Usage: dockerfile_replay.py DOCKERFILE STAGING_DIR [--target-arch amd64|arm64] [--build-arg NAME=VALUE]...
Prints the binary's path (inside STAGING_DIR) as the last line.
"""

import argparse
import json
import platform
import os
import shlex
import shutil
import subprocess
import sys

BINARY = "/oauth-token-operator"
PLUGIN = "kubectl-oauthtoken"  # the kubectl plugin: a link to BINARY beside it, at /
ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}  # uname -m -> Docker's TARGETARCH


def instructions(path):
    """(line number, INSTRUCTION, arguments) with continuation lines joined."""
    out, buffer, start = [], "", 0
    with open(path) as f:
        for number, line in enumerate(f, 1):
            stripped = line.strip()
            if not buffer and (not stripped or stripped.startswith("#")):
                continue
            if buffer and stripped.startswith("#"):
                continue  # comment lines inside a continued instruction are dropped by Docker
            if not buffer:
                start = number
            if stripped.endswith("\\"):
                buffer += stripped[:-1] + " "
                continue
            buffer += stripped
            keyword, _, rest = buffer.partition(" ")
            out.append((start, keyword.upper(), rest.strip()))
            buffer = ""
    return out


def fail(message):
    print(f"dockerfile replay: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dockerfile")
    parser.add_argument("staging")
    parser.add_argument("--target-arch", choices=sorted(ARCHES.values()),
                        default=ARCHES.get(platform.machine()))
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE")
    options = parser.parse_args()
    build_args = {}
    for build_arg in options.build_arg:
        name, has_value, value = build_arg.partition("=")
        if not has_value:
            fail(f"--build-arg {build_arg}: expected NAME=VALUE")
        build_args[name] = value
    dockerfile, staging = options.dockerfile, os.path.abspath(options.staging)
    if options.target_arch is None:
        fail(f"this machine's architecture {platform.machine()} is not one the image is built for")
    repo = os.path.dirname(os.path.abspath(dockerfile))
    if os.path.exists(staging):
        shutil.rmtree(staging)
    os.makedirs(staging)
    # Docker builds into WORKDIR/target; here that is a link to the shared target directory.
    shared_target = os.path.abspath(os.environ.get("CARGO_TARGET_DIR") or os.path.join(repo, "target"))
    os.symlink(shared_target, os.path.join(staging, "target"))
    env = {k: v for k, v in os.environ.items() if k != "CARGO_TARGET_DIR"}

    stages = []  # (name, base image, --platform or None, [(line, keyword, args)])
    for line, keyword, args in instructions(dockerfile):
        if keyword == "FROM":
            words = args.split()
            platform_flag = None
            if words and words[0].startswith("--platform="):
                platform_flag = words.pop(0).partition("=")[2]
            if any(w.startswith("--") for w in words):
                fail(f"line {line}: FROM options other than --platform are not replayed: {args}")
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append((name, words[0], platform_flag, []))
        elif stages:
            stages[-1][3].append((line, keyword, args))
        else:
            fail(f"line {line}: {keyword} before the first FROM is not replayed")
    if [s[0] for s in stages] != ["build", None]:
        fail(f"expected a `build` stage and an unnamed runtime stage, got {[s[0] for s in stages]}")
    (_, build_image, build_platform, build), (_, runtime_image, runtime_platform, runtime) = stages
    # Cross-compiling on the build machine, not emulating the target: the build stage runs on
    # BUILDPLATFORM; the runtime stage is the target platform's (no --platform).
    if build_platform != "$BUILDPLATFORM":
        fail(f"the build stage must be `FROM --platform=$BUILDPLATFORM ...`, has --platform={build_platform}")
    if runtime_platform is not None:
        fail(f"the runtime stage must not set --platform (it is the target's), has {runtime_platform}")
    # BuildKit's automatic platform arguments, as BuildKit would set them for this replay.
    automatic = {
        "TARGETARCH": options.target_arch,
        "TARGETOS": "linux",
        "TARGETPLATFORM": f"linux/{options.target_arch}",
        "BUILDARCH": ARCHES.get(platform.machine(), platform.machine()),
        "BUILDOS": "linux",
        "BUILDPLATFORM": f"linux/{ARCHES.get(platform.machine(), platform.machine())}",
    }
    for name in automatic:
        env.pop(name, None)  # only a declared ARG reaches the RUN steps
    print(f"replaying the build stage for linux/{options.target_arch} on {automatic['BUILDPLATFORM']}",
          file=sys.stderr)

    unused = sorted(set(build_args) - {a.partition("=")[0] for _, k, a in build if k == "ARG"})
    if unused:
        fail(f"--build-arg {', '.join(unused)}: no such ARG in the build stage")
    workdir = None
    declared = set()
    for line, keyword, args in build:
        if keyword == "WORKDIR":
            workdir = args
        elif keyword == "ARG":
            name, has_default, default = args.partition("=")
            if name in automatic:
                if has_default:
                    fail(f"line {line}: ARG {name} is set by BuildKit; it takes no default")
                env[name] = automatic[name]
            elif name in build_args:
                env[name] = build_args[name]
            elif has_default:
                env[name] = default.strip('"')
            else:
                fail(f"line {line}: ARG {name} without a default is not replayed")
            declared.add(name)
        elif keyword == "COPY":
            words = shlex.split(args)
            if any(w.startswith("--") for w in words):
                fail(f"line {line}: COPY options are not replayed: {args}")
            *sources, dest = words
            target_dir = os.path.join(staging, dest)
            for source in sources:
                origin = os.path.join(repo, source)
                if not os.path.exists(origin):
                    fail(f"line {line}: {source} does not exist")
                if len(sources) > 1 or dest.endswith("/"):
                    os.makedirs(target_dir, exist_ok=True)
                    destination = os.path.join(target_dir, os.path.basename(source.rstrip("/")))
                else:
                    destination = target_dir
                    os.makedirs(os.path.dirname(destination), exist_ok=True)
                if os.path.isdir(origin):
                    shutil.copytree(origin, destination, dirs_exist_ok=True)
                else:
                    shutil.copy2(origin, destination)
        elif keyword == "RUN":
            if args.startswith("["):
                fail(f"line {line}: exec-form RUN is not replayed")
            print(f"--- Dockerfile line {line}: RUN {args}", file=sys.stderr, flush=True)
            result = subprocess.run(["sh", "-c", args], cwd=staging, env=env)
            if result.returncode != 0:
                fail(f"line {line}: RUN failed with exit code {result.returncode}")
        else:
            fail(f"line {line}: {keyword} in the build stage is not replayed")
    if workdir != "/src":
        fail(f"the build stage's WORKDIR must be /src, is {workdir}")
    if "TARGETARCH" not in declared:
        fail("the build stage must declare ARG TARGETARCH (it cross-compiles for it)")

    # The runtime stage: the binary from the build stage, unprivileged, `run` by default, and
    # the kubectl plugin's link to it.
    copies = [a for _, k, a in runtime if k == "COPY"]
    plugin_copies = [c for c in copies if shlex.split(c)[-1] == "/"]
    copies = [c for c in copies if c not in plugin_copies]
    if len(copies) != 1:
        fail(f"the runtime stage must copy exactly the binary, copies {copies}")
    if len(plugin_copies) != 1:
        fail(f"the runtime stage must copy the plugin link directory to /, copies {plugin_copies}")
    plugin_words = shlex.split(plugin_copies[0])
    if (len(plugin_words) != 3 or plugin_words[0] != "--from=build"
            or not plugin_words[1].startswith(workdir + "/") or not plugin_words[1].endswith("/")):
        fail(f"the plugin link must come from a directory of the build stage, `COPY --from=build "
             f"{workdir}/<dir>/ /`, has {plugin_copies[0]}")
    plugin_dir = os.path.join(staging, plugin_words[1][len(workdir) + 1:])
    entries = sorted(os.listdir(plugin_dir)) if os.path.isdir(plugin_dir) else None
    if entries != [PLUGIN]:
        fail(f"{plugin_words[1]} must hold exactly the link {PLUGIN}, holds {entries}")
    link = os.path.join(plugin_dir, PLUGIN)
    if not os.path.islink(link) or os.readlink(link) != BINARY.lstrip("/"):
        fail(f"{plugin_words[1]}{PLUGIN} must be a link to {BINARY.lstrip('/')} (a relative link, "
             f"which points at {BINARY} in the image)")
    words = shlex.split(copies[0])
    if len(words) != 3 or words[0] != "--from=build" or words[2] != BINARY:
        fail(f"the runtime stage must `COPY --from=build /src/<binary> {BINARY}`, has {copies[0]}")
    if not words[1].startswith(workdir + "/"):
        fail(f"the runtime stage copies {words[1]}, outside the build WORKDIR {workdir}")
    binary = os.path.join(staging, words[1][len(workdir) + 1:])
    if not os.path.isfile(binary):
        fail(f"the runtime stage copies {words[1]}, which the build stage did not produce")
    settings = {k: a for _, k, a in runtime if k in ("USER", "ENTRYPOINT", "CMD")}
    expected = {"USER": "65532:65532", "ENTRYPOINT": [BINARY], "CMD": ["run"]}
    for key, value in expected.items():
        got = settings.get(key)
        if key != "USER":
            got = json.loads(got) if got else None
        if got != value:
            fail(f"runtime stage {key} is {got!r}, expected {value!r}")
    if "/distroless/static" not in runtime_image or ":" not in runtime_image.rsplit("/", 1)[1]:
        fail(f"the runtime image must be distroless/static pinned by tag, is {runtime_image}")
    print(f"build image {build_image} (on $BUILDPLATFORM), runtime image {runtime_image}, "
          f"linux/{options.target_arch}", file=sys.stderr)
    print(binary)


if __name__ == "__main__":
    main()
