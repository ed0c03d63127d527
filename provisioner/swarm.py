"""`invoke deploy`: render workers on a Docker swarm (the engine's swarm mode), as the stack `<project>-swarm`
deployed with `docker stack deploy` from compose/swarm.yaml.

The stack runs an image registry (compose/registry: Debian's `docker-registry` package) on the manager `invoke deploy`
runs on, published on `registry_port`; the worker image is pushed there as
`<registry host>:<registry_port>/renderdev/worker:<tag>` and the stack's services name it by digest, so every node
pulls exactly the image that was pushed. Two worker services: `pq` (preemptible jobs) on nodes labelled
`renderdev.preemptible=true`, `sq` (standard jobs) on the others; a one-node swarm (a developer's host) runs both on
its one node. Their worker file (a worker credential, `invoke worker-config`'s: credential `swarm` by default, or
`--config FILE`) is a swarm secret whose name carries the file's digest: a new file is a new secret, and secrets of
the stack that no service uses any more are removed. Workers use the host's network: they reach the stack's Redis and
API on their node's loopback ports (other nodes need the stack exposed).

Plan, then act: the swarm, the images, the stack, the credential, the secret, the registry, the pushed image, then
the worker services, whose desired spec (replicas, image digest, secret, and a digest of the rest) is compared with
`docker service inspect`: the same numbers again change nothing. A scale-down stops tasks with SIGTERM within
`stop_grace_period`: each worker stops Blender and puts its job on sq (a preemption, never a loss). `--remove` removes
the stack, its registry volume on this node and its secrets.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import yaml
from rich.console import Console

from provisioner import proc
from provisioner.config import Settings
from provisioner.errors import ConfigError, DockerError
from provisioner.plan import Outcome, Step, StepState, report, run_steps

if TYPE_CHECKING:
    import docker

QUEUE_SERVICES = ("pq", "sq")  # the worker services, each serving the queue of its name
REGISTRY_SERVICE = "registry"
PREEMPTIBLE_LABEL = "renderdev.preemptible"  # node label: `docker node update --label-add renderdev.preemptible=true N`
STACK_LABEL = "com.docker.stack.namespace"  # set by `docker stack deploy` on what it makes
SECRET_LABEL = "org.renderdev.swarm.stack"  # on the worker-file secrets invoke deploy makes
SECRET_DIGEST_LABEL = "org.renderdev.worker-file-sha256"
SPEC_LABEL = "org.renderdev.swarm.spec"
CREDENTIAL = "swarm"  # the worker credential a deploy makes when no --config is given
MAX_REPLICAS = 64
SECRET_NAME_MAX = 64  # the engine's limit
LOOPBACK = "127.0.0.1"
POLL = 0.5
PUSH_TIMEOUT = 1800.0
REMOVE_TIMEOUT = 120.0
STOP_GRACE = 30.0  # compose/swarm.yaml's stop_grace_period
DEPLOY_TIMEOUT = 120.0
SAMPLE_VARIABLES = ("RENDERFARM_PREVIEW_SAMPLES", "RENDERFARM_HD_SAMPLES")  # read from this process's environment
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)


# ---------------------------------------------------------------- names and pure computations


def stack_name(settings: Settings) -> str:
    """The swarm stack of a project: `<project>-swarm` (its services are `<stack>_pq`, `<stack>_sq`, ...)."""
    return f"{settings.project}-swarm"


def service_name(stack: str, service: str) -> str:
    return f"{stack}_{service}"


def registry_volume(stack: str) -> str:
    return f"{stack}_registry"


def secret_name(stack: str, content: bytes) -> str:
    """The swarm secret holding this worker file: `<stack>-worker-<sha256 12>`, so another file is another secret."""
    name = f"{stack}-worker-{hashlib.sha256(content).hexdigest()[:12]}"
    if len(name) > SECRET_NAME_MAX:
        raise ConfigError(
            f"the swarm secret name {name!r} is longer than {SECRET_NAME_MAX} characters (project {stack[:-6]!r})",
            hint="use a shorter project name: RENDERDEV_PROJECT=NAME invoke deploy",
        )
    return name


def parse_count(raw: str | int | None, option: str) -> int:
    """A replica count from 0 to MAX_REPLICAS (None: 0); a ConfigError naming the option and value otherwise."""
    if raw is None:
        return 0
    text = str(raw).strip()
    if not text.isdigit() or int(text) > MAX_REPLICAS:
        raise ConfigError(
            f"{option} {raw!r} is not a whole number from 0 to {MAX_REPLICAS}",
            hint="e.g. invoke deploy --preemptible 2 --standard 1",
        )
    return int(text)


@dataclass(frozen=True)
class Node:
    """A swarm node as placement sees it."""

    id: str
    hostname: str
    role: str  # manager | worker
    availability: str  # active | pause | drain
    preemptible: bool  # labelled renderdev.preemptible=true


@dataclass(frozen=True)
class Placement:
    """Where each worker service may run: a constraint per service."""

    pq: str
    sq: str
    note: str  # said in the plan


def placement(nodes: Sequence[Node]) -> Placement:
    """pq on nodes labelled renderdev.preemptible=true, sq on the others; a one-node swarm runs both on its node
    (a developer's host: there are no others)."""
    if len(nodes) == 1:
        only = nodes[0]
        constraint = f"node.id == {only.id}"
        return Placement(constraint, constraint, f"one node ({only.hostname}): pq and sq both on it")
    labelled = sum(1 for n in nodes if n.preemptible)
    return Placement(
        f"node.labels.{PREEMPTIBLE_LABEL} == true",
        f"node.labels.{PREEMPTIBLE_LABEL} != true",
        f"{len(nodes)} nodes: pq on the {labelled} labelled {PREEMPTIBLE_LABEL}=true, sq on the other"
        f" {len(nodes) - labelled}",
    )


def check_placement(nodes: Sequence[Node], preemptible: int, standard: int) -> None:
    """ConfigError when a service with replicas has no node to run on (several nodes, none or all labelled)."""
    if len(nodes) <= 1:
        return
    active = [n for n in nodes if n.availability == "active"]
    labelled = [n for n in active if n.preemptible]
    if preemptible and not labelled:
        raise ConfigError(
            f"--preemptible {preemptible}: no active node of the swarm is labelled {PREEMPTIBLE_LABEL}=true",
            hint=f"docker node update --label-add {PREEMPTIBLE_LABEL}=true NODE, then re-run invoke deploy",
        )
    if standard and len(labelled) == len(active):
        raise ConfigError(
            f"--standard {standard}: every active node of the swarm is labelled {PREEMPTIBLE_LABEL}=true",
            hint=f"docker node update --label-rm {PREEMPTIBLE_LABEL} NODE, then re-run invoke deploy",
        )


def registry_host(node_addr: str, node_count: int) -> str:
    """The address nodes pull the worker image from: the manager's advertise address when other nodes must reach
    it, else 127.0.0.1 (one node; the engine pulls from a loopback registry over plain HTTP without configuration)."""
    if node_count <= 1 or not node_addr:
        return LOOPBACK
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(node_addr).is_loopback:
            return LOOPBACK
    return node_addr


def worker_repository(settings: Settings, host: str) -> str:
    """The worker image's repository in the swarm's registry: <host>:<registry_port>/renderdev/worker."""
    return f"{host}:{settings.registry_port}/{settings.image_prefix}/worker"


@dataclass(frozen=True)
class ServiceSpec:
    """What `invoke deploy` decides about a worker service, and what `docker service inspect` tells of one."""

    name: str
    replicas: int
    image: str
    secret: str | None
    spec: str  # digest of everything else (the stack file, placement, settings): the label SPEC_LABEL


def spec_of(attrs: Mapping[str, Any]) -> ServiceSpec:
    """The ServiceSpec of an inspected service (`Service.attrs`)."""
    spec = attrs.get("Spec") or {}
    container = (spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}
    replicated = (spec.get("Mode") or {}).get("Replicated") or {}
    secrets = [str(s.get("SecretName")) for s in container.get("Secrets") or []]
    return ServiceSpec(
        name=str(spec.get("Name", "")),
        replicas=int(replicated.get("Replicas") or 0),
        image=str(container.get("Image", "")),
        secret=secrets[0] if secrets else None,
        spec=str((spec.get("Labels") or {}).get(SPEC_LABEL, "")),
    )


def differences(desired: ServiceSpec, current: ServiceSpec | None) -> list[str]:
    """What would change from `current` to `desired`, in words; [] when nothing would."""
    if current is None:
        return [f"create with {desired.replicas} replica(s)"]
    out = []
    if current.replicas != desired.replicas:
        out.append(f"replicas {current.replicas} -> {desired.replicas}")
    if current.image != desired.image:
        out.append(f"image {_short_ref(current.image)} -> {_short_ref(desired.image)}")
    if current.secret != desired.secret:
        out.append(f"secret {current.secret} -> {desired.secret}")
    if current.spec != desired.spec:
        out.append("stack file or settings changed")
    return out


def _short_ref(ref: str) -> str:
    name, _, digest = ref.partition("@")
    return f"{name}@{digest[:19]}" if digest else name


def spec_digest(stack_file: bytes, variables: Mapping[str, str]) -> str:
    """The digest of the stack file and the variables the workers' spec label covers: all but those compared one by
    one (replicas, image, secret) and the registry's own."""
    kept = {k: v for k, v in variables.items() if k not in NOT_IN_SPEC}
    h = hashlib.sha256(stack_file)
    for key in sorted(kept):
        h.update(f"\0{key}={kept[key]}".encode())
    return h.hexdigest()[:16]


NOT_IN_SPEC = frozenset(
    {
        "RENDERDEV_PQ_REPLICAS",
        "RENDERDEV_SQ_REPLICAS",
        "RENDERDEV_WORKER_IMAGE",
        "RENDERDEV_WORKER_SECRET",
        "RENDERDEV_SWARM_SPEC",
        "RENDERDEV_REGISTRY_IMAGE",
        "RENDERDEV_REGISTRY_NODE",
        "RENDERDEV_REGISTRY_SPEC",
    }
)


def registry_only(stack_file: str) -> str:
    """The stack file without its worker services: what is deployed first, so that the registry runs before the
    worker image is pushed to it (a deploy without --prune leaves the services it does not name alone)."""
    data = yaml.safe_load(stack_file)
    kept = {k: v for k, v in data.items() if k in ("version", "volumes")}
    kept["services"] = {REGISTRY_SERVICE: data["services"][REGISTRY_SERVICE]}
    return yaml.safe_dump(kept, sort_keys=False)


# ---------------------------------------------------------------- what is there


@dataclass
class Facts:
    """The swarm and the stack as they are, read once before the plan."""

    active: bool  # the engine is in a swarm
    manager: bool
    node_id: str
    node_addr: str
    nodes: list[Node]
    services: dict[str, Any]  # service name -> docker Service
    secrets: dict[str, Any]  # the stack's worker-file secrets: name -> docker Secret


def read_facts(client: docker.DockerClient, stack: str) -> Facts:
    info = client.info().get("Swarm") or {}
    active = info.get("LocalNodeState") == "active"
    manager = bool(info.get("ControlAvailable"))
    facts = Facts(active, manager, str(info.get("NodeID") or ""), str(info.get("NodeAddr") or ""), [], {}, {})
    if not manager:
        return facts
    facts.nodes = [_node(n.attrs) for n in client.nodes.list()]
    for s in client.services.list(filters={"label": f"{STACK_LABEL}={stack}"}):
        facts.services[str(s.name)] = s
    for sec in client.secrets.list(filters={"label": f"{SECRET_LABEL}={stack}"}):
        facts.secrets[str(sec.name)] = sec
    return facts


def _node(attrs: Mapping[str, Any]) -> Node:
    spec = attrs.get("Spec") or {}
    labels = spec.get("Labels") or {}
    return Node(
        id=str(attrs.get("ID", "")),
        hostname=str((attrs.get("Description") or {}).get("Hostname", "")),
        role=str(spec.get("Role", "")),
        availability=str(spec.get("Availability", "")),
        preemptible=str(labels.get(PREEMPTIBLE_LABEL, "")).lower() == "true",
    )


def registry_answers(settings: Settings, timeout: float = 3.0) -> bool:
    try:
        return requests.get(f"http://{LOOPBACK}:{settings.registry_port}/v2/", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def registry_has(settings: Settings, repository: str, digest: str) -> bool:
    """The registry (on this node, 127.0.0.1) holds the manifest `digest` of `repository`."""
    path = repository.split("/", 1)[1]
    url = f"http://{LOOPBACK}:{settings.registry_port}/v2/{path}/manifests/{digest}"
    try:
        return requests.head(url, headers={"Accept": MANIFEST_TYPES}, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def pushed_digest(client: docker.DockerClient, settings: Settings, repository: str) -> str | None:
    """The digest under which the local worker image was pushed to `repository` (its RepoDigests), if it was."""
    from provisioner.images import find_image

    image = find_image(client, settings.image("worker"))
    for ref in (image.attrs.get("RepoDigests") or []) if image is not None else []:
        name, _, digest = str(ref).partition("@")
        if name == repository and digest:
            return digest
    return None


# ---------------------------------------------------------------- the deploy


@dataclass
class _Resolved:
    """What earlier steps decide for later ones (filled when they are applied, or from what is there)."""

    facts: Facts
    content: bytes | None = None  # the worker file
    digest: str | None = None  # the worker image's digest in the registry
    errors: list[str] = field(default_factory=list)


def deploy(
    client: docker.DockerClient,
    settings: Settings,
    console: Console,
    *,
    preemptible: str | int | None = None,
    standard: str | int | None = None,
    config: Path | None = None,
    init_swarm: bool = False,
    remove: bool = False,
    dry_run: bool = False,
) -> Outcome:
    """`invoke deploy`: plan, show the plan, then (unless dry_run) deploy the render workers on the swarm; with
    `remove`, remove the stack and its secrets."""
    stack = stack_name(settings)
    if remove:
        outcome = run_steps(console, plan_remove(client, settings), dry_run=dry_run, heading=f"Plan: remove {stack}")
        report(console, outcome, dry_run=dry_run)
        return outcome
    pq, sq = parse_count(preemptible, "--preemptible"), parse_count(standard, "--standard")
    access = _read_worker_file(config) if config is not None else None
    facts = read_facts(client, stack)
    outcome = Outcome()
    swarm_step = _plan_swarm(client, facts, init_swarm)
    check_placement(facts.nodes, pq, sq)
    outcome.merge(run_steps(console, [swarm_step], dry_run=dry_run, heading="Plan: swarm"))
    if swarm_step.needed and not dry_run:
        facts = read_facts(client, stack)

    from provisioner.images import plan_images
    from provisioner.workers import require_stack

    image_steps = plan_images(client, settings, console, only=("worker", REGISTRY_SERVICE))
    outcome.merge(run_steps(console, image_steps, dry_run=dry_run, heading="Plan: images"))
    require_stack(client, settings)
    resolved = _Resolved(facts, content=access)
    if access is None:
        from provisioner.worker_access import host_endpoints, plan_credential, stack_clients, worker_file

        path = worker_file(settings, CREDENTIAL)
        with stack_clients(settings) as (r, sessions):
            credential = plan_credential(
                settings, r, sessions, name=CREDENTIAL, path=path, endpoints=host_endpoints(settings)
            )
            outcome.merge(run_steps(console, [credential], dry_run=dry_run, heading="Plan: worker credential"))
        if path.exists() and not (credential.needed and dry_run):
            resolved.content = path.read_bytes()
    steps = plan_stack(client, settings, resolved, pq, sq)
    outcome.merge(run_steps(console, steps, dry_run=dry_run, heading=f"Plan: swarm stack {stack}"))
    report(console, outcome, dry_run=dry_run)
    return outcome


def _read_worker_file(path: Path) -> bytes:
    """The bytes of a worker file given with --config, checked to be one (renderfarm.settings.WorkerAccess)."""
    from renderfarm.errors import RenderfarmError
    from renderfarm.settings import WorkerAccess

    try:
        WorkerAccess.from_file(path)
        return path.read_bytes()
    except (RenderfarmError, OSError) as exc:
        raise ConfigError(
            f"--config {path}: not a usable worker file ({exc})",
            hint="make one with: invoke worker-config --name NAME --output FILE",
        ) from exc


def _plan_swarm(client: docker.DockerClient, facts: Facts, init_swarm: bool) -> Step:
    title = "swarm mode of this engine"
    if facts.active and not facts.manager:
        raise DockerError(
            "this engine is a worker node of a swarm: a stack is deployed from a manager",
            hint="run invoke deploy on a manager (docker node ls there), or promote this node: docker node promote",
        )
    if facts.active:
        return Step("swarm", title, StepState.OK, f"manager {facts.node_addr or '?'}, {len(facts.nodes)} node(s)")
    if not init_swarm:
        raise DockerError(
            "this engine is not in a swarm: invoke deploy runs render workers as a swarm stack",
            hint="on a single-node host: invoke deploy --init-swarm; for several hosts: docker swarm init"
            " --advertise-addr ADDR here, then docker swarm join on the others",
        )

    def apply() -> str:
        from docker.errors import APIError

        try:
            client.swarm.init(advertise_addr=LOOPBACK, listen_addr=f"{LOOPBACK}:2377")
        except APIError as exc:
            raise DockerError(
                f"docker swarm init failed: {exc.explanation}", hint="docker info; docker swarm init"
            ) from exc
        return f"single-node swarm, advertised on {LOOPBACK} (undo: docker swarm leave --force)"

    return Step(
        "swarm", title, StepState.CHANGE, f"docker swarm init --advertise-addr {LOOPBACK} (a single-node swarm)", apply
    )


def stack_variables(
    settings: Settings,
    facts: Facts,
    *,
    pq: int,
    sq: int,
    image: str,
    secret: str,
    registry_spec: str,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables compose/swarm.yaml reads (its spec digest included)."""
    env = os.environ if environ is None else environ
    where = placement(facts.nodes or [Node(facts.node_id, "this host", "manager", "active", False)])
    variables = {
        "RENDERDEV_REGISTRY_IMAGE": settings.image(REGISTRY_SERVICE),
        "RENDERDEV_REGISTRY_PORT": str(settings.registry_port),
        "RENDERDEV_REGISTRY_NODE": facts.node_id,
        "RENDERDEV_REGISTRY_SPEC": registry_spec,
        "RENDERDEV_WORKER_IMAGE": image,
        "RENDERDEV_WORKER_SECRET": secret,
        "RENDERDEV_PQ_REPLICAS": str(pq),
        "RENDERDEV_SQ_REPLICAS": str(sq),
        "RENDERDEV_PQ_CONSTRAINT": where.pq,
        "RENDERDEV_SQ_CONSTRAINT": where.sq,
        "RENDERDEV_WARM_BLENDER": "true" if settings.warm_blender else "false",
        "RENDERDEV_WARM_MAX_JOBS": str(settings.warm_max_jobs),
        **{name: env.get(name, "").strip() for name in SAMPLE_VARIABLES},
    }
    variables["RENDERDEV_SWARM_SPEC"] = spec_digest(stack_file(settings).read_bytes(), variables)
    return variables


def stack_file(settings: Settings) -> Path:
    return settings.compose_dir / "swarm.yaml"


def plan_stack(client: docker.DockerClient, settings: Settings, resolved: _Resolved, pq: int, sq: int) -> list[Step]:
    """The secret, the registry, the pushed image, the worker services, the old secrets: each ok or a change."""
    stack, facts = stack_name(settings), resolved.facts
    host = registry_host(facts.node_addr, len(facts.nodes))
    repository = worker_repository(settings, host)
    secret = secret_name(stack, resolved.content) if resolved.content is not None else None

    # the worker file's secret
    if secret is not None and secret in facts.secrets:
        secret_step = Step("swarm", "worker file secret", StepState.OK, secret)
    else:

        def make_secret() -> str:
            content = _content(resolved)
            name = secret_name(stack, content)
            if not client.secrets.list(filters={"name": name}):
                labels = {SECRET_LABEL: stack, SECRET_DIGEST_LABEL: hashlib.sha256(content).hexdigest()}
                client.secrets.create(name=name, data=content, labels=labels)
            return name

        secret_step = Step(
            "swarm",
            "worker file secret",
            StepState.CHANGE,
            f"create {secret or 'one for the new worker file'}",
            make_secret,
        )

    # the registry
    registry = service_name(stack, REGISTRY_SERVICE)
    registry_spec = _registry_spec(client, settings)
    current = facts.services.get(registry)
    registry_ok = (
        current is not None
        and spec_of(current.attrs).spec == registry_spec
        and spec_of(current.attrs).image == settings.image(REGISTRY_SERVICE)
        and registry_answers(settings)
    )
    if registry_ok:
        registry_step = Step(
            "swarm", f"registry {registry}", StepState.OK, f"answers on {LOOPBACK}:{settings.registry_port}"
        )
    else:
        registry_step = Step(
            "swarm",
            f"registry {registry}",
            StepState.CHANGE,
            f"deploy it ({settings.image(REGISTRY_SERVICE)}, port {settings.registry_port}), wait until it answers",
            lambda: deploy_registry(client, settings, resolved, registry_spec),
        )

    # the worker image in it
    digest = pushed_digest(client, settings, repository)
    if digest is not None and registry_ok and registry_has(settings, repository, digest):
        resolved.digest = digest
        push_step = Step("swarm", f"image {repository}:{settings.image_tag}", StepState.OK, digest[:19])
    else:
        push_step = Step(
            "swarm",
            f"image {repository}:{settings.image_tag}",
            StepState.CHANGE,
            f"push {settings.image('worker')} (about 1.3 GB the first time)",
            lambda: push_worker(client, settings, resolved, repository),
        )

    # the worker services
    wanted = {"pq": pq, "sq": sq}
    known = resolved.digest is not None and secret is not None and not secret_step.needed
    changes: list[str] = []
    if known:
        image = f"{repository}:{settings.image_tag}@{resolved.digest}"
        variables = stack_variables(
            settings, facts, pq=pq, sq=sq, image=image, secret=str(secret), registry_spec=registry_spec
        )
        for svc in QUEUE_SERVICES:
            name = service_name(stack, svc)
            desired = ServiceSpec(name, wanted[svc], image, secret, variables["RENDERDEV_SWARM_SPEC"])
            found = facts.services.get(name)
            diff = differences(desired, spec_of(found.attrs) if found is not None else None)
            changes += [f"{svc}: {d}" for d in diff]
    else:
        changes.append("deploy with the pushed image and the new secret")
    title = f"workers {service_name(stack, 'pq')}={pq}, {service_name(stack, 'sq')}={sq}"
    where = placement(facts.nodes or [Node(facts.node_id, "this host", "manager", "active", False)]).note
    if not changes:
        services_step = Step("swarm", title, StepState.OK, where)
    else:
        detail = "; ".join(changes) + f" ({where}; a scale-down drains: SIGTERM, jobs back on sq)"
        services_step = Step(
            "swarm",
            title,
            StepState.CHANGE,
            detail,
            lambda: deploy_workers(client, settings, resolved, repository, pq, sq),
        )

    # old secrets
    old = sorted(n for n in facts.secrets if n != secret)
    if old:
        old_step = Step(
            "swarm",
            "old worker file secrets",
            StepState.CHANGE,
            f"remove those no service uses any more: {', '.join(old)}",
            lambda: remove_unused_secrets(client, stack),
        )
    else:
        old_step = Step("swarm", "old worker file secrets", StepState.OK, "none")
    return [secret_step, registry_step, push_step, services_step, old_step]


def _content(resolved: _Resolved) -> bytes:
    if resolved.content is None:
        raise DockerError("no worker file to put in the swarm secret", hint="invoke worker-config --name swarm")
    return resolved.content


def _registry_spec(client: docker.DockerClient, settings: Settings) -> str:
    """The registry's spec digest: the stack file and its image's id (a rebuilt image is a changed spec)."""
    from provisioner.images import find_image

    image = find_image(client, settings.image(REGISTRY_SERVICE))
    return spec_digest(
        stack_file(settings).read_bytes(),
        {"image_id": image.id if image is not None else "", "port": str(settings.registry_port)},
    )


def stack_deploy(settings: Settings, stack: str, variables: Mapping[str, str], *, text: str | None = None) -> str:
    """`docker stack deploy` of compose/swarm.yaml (or `text`, on stdin) with `variables`; its output."""
    import subprocess

    argv = ["docker", "stack", "deploy", "--resolve-image", "never", "--compose-file"]
    argv += ["-", stack] if text is not None else [str(stack_file(settings)), stack]
    if text is None:
        done = proc.run(argv, env=variables, cwd=settings.compose_dir, timeout=DEPLOY_TIMEOUT, hint=_hint(stack))
        return (done.stdout or "") + (done.stderr or "")
    try:
        ran = subprocess.run(
            argv,
            input=text,
            env=proc.clean_env(variables),
            cwd=settings.compose_dir,
            capture_output=True,
            text=True,
            timeout=DEPLOY_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DockerError(f"{' '.join(argv)}: {exc}", hint=_hint(stack)) from exc
    if ran.returncode != 0:
        from provisioner.errors import CommandError

        raise CommandError(argv, ran.returncode, proc.tail(ran.stderr or ran.stdout or ""), hint=_hint(stack))
    return (ran.stdout or "") + (ran.stderr or "")


def _hint(stack: str) -> str:
    return f"docker stack ps --no-trunc {stack}; fix compose/swarm.yaml or the settings, then re-run: invoke deploy"


def deploy_registry(client: docker.DockerClient, settings: Settings, resolved: _Resolved, spec: str) -> str:
    """Deploy the stack's registry alone, then wait until its v2 API answers on 127.0.0.1:<registry_port>."""
    stack = stack_name(settings)
    node = str((client.info().get("Swarm") or {}).get("NodeID") or resolved.facts.node_id)
    variables = {
        "RENDERDEV_REGISTRY_IMAGE": settings.image(REGISTRY_SERVICE),
        "RENDERDEV_REGISTRY_PORT": str(settings.registry_port),
        "RENDERDEV_REGISTRY_NODE": node,
        "RENDERDEV_REGISTRY_SPEC": spec,
    }
    started = time.monotonic()
    stack_deploy(settings, stack, variables, text=registry_only(stack_file(settings).read_text()))
    deadline = started + settings.health_timeout
    while not registry_answers(settings, timeout=2):
        if time.monotonic() > deadline:
            raise DockerError(
                f"the registry {service_name(stack, REGISTRY_SERVICE)} does not answer on"
                f" {LOOPBACK}:{settings.registry_port} after {settings.health_timeout:.0f} s",
                hint=f"docker service ps --no-trunc {service_name(stack, REGISTRY_SERVICE)}; is port"
                f" {settings.registry_port} free? (RENDERDEV_REGISTRY_PORT=N invoke deploy)",
            )
        time.sleep(POLL)
    return f"answers on {LOOPBACK}:{settings.registry_port} after {time.monotonic() - started:.1f} s"


def push_worker(client: docker.DockerClient, settings: Settings, resolved: _Resolved, repository: str) -> str:
    """Tag the worker image into the registry's repository and push it; remember its digest."""
    from docker.errors import DockerException

    from provisioner.images import find_image

    image = find_image(client, settings.image("worker"))
    if image is None:
        raise DockerError(f"the worker image {settings.image('worker')} is missing", hint="invoke images")
    started = time.monotonic()
    digest = None
    try:
        image.tag(repository, tag=settings.image_tag)
        for chunk in client.api.push(repository, tag=settings.image_tag, stream=True, decode=True):
            if "error" in chunk:
                raise DockerError(
                    f"push of {repository}:{settings.image_tag} failed: {chunk['error']}",
                    hint=f"curl http://{LOOPBACK}:{settings.registry_port}/v2/; then re-run: invoke deploy",
                )
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
    except (DockerException, requests.RequestException) as exc:
        raise DockerError(f"push of {repository}:{settings.image_tag} failed: {exc}", hint="invoke deploy") from exc
    digest = digest or pushed_digest(client, settings, repository)
    if digest is None:
        raise DockerError(f"the push of {repository}:{settings.image_tag} reported no digest", hint="invoke deploy")
    resolved.digest = digest
    return f"pushed {digest[:19]} in {time.monotonic() - started:.0f} s"


def deploy_workers(
    client: docker.DockerClient, settings: Settings, resolved: _Resolved, repository: str, pq: int, sq: int
) -> str:
    """`docker stack deploy` of the whole stack with the pushed image's digest and the worker file's secret, then
    wait until each service runs its replicas, each listed by rq, and scaled-down tasks are gone (drained)."""
    stack = stack_name(settings)
    if resolved.digest is None:
        raise DockerError("the worker image's digest is unknown (it was not pushed)", hint="invoke deploy")
    facts = read_facts(client, stack)  # the swarm as it is now (a node joined, the registry deployed)
    facts.nodes = facts.nodes or resolved.facts.nodes
    image = f"{repository}:{settings.image_tag}@{resolved.digest}"
    secret = secret_name(stack, _content(resolved))
    variables = stack_variables(
        settings, facts, pq=pq, sq=sq, image=image, secret=secret, registry_spec=_registry_spec(client, settings)
    )
    before = {str(t["ID"]) for s in facts.services.values() for t in s.tasks()}
    started = time.monotonic()
    stack_deploy(settings, stack, variables)
    wanted = {service_name(stack, "pq"): pq, service_name(stack, "sq"): sq}
    wait_converged(client, settings, wanted, before, started + settings.health_timeout + STOP_GRACE)
    return f"pq {pq}, sq {sq} running, each listed by rq, after {time.monotonic() - started:.1f} s"


def wait_converged(
    client: docker.DockerClient,
    settings: Settings,
    wanted: Mapping[str, int],
    before: set[str],
    deadline: float,
    *,
    listed: Callable[[], list[str]] | None = None,
) -> None:
    """Until each service runs exactly its replicas (stopped tasks gone: a scale-down waits for the drain) and rq
    lists that many workers of it; a new task that fails, or the deadline, raises DockerError naming it."""
    rq_names = listed if listed is not None else (lambda: _rq_worker_names(settings))
    while True:
        waiting = []
        for name, replicas in wanted.items():
            service = client.services.get(name)
            tasks = service.tasks()
            for t in tasks:  # a task this deploy made that failed: its error, not a time-out
                if str(t["ID"]) not in before and (t.get("Status") or {}).get("State") in ("failed", "rejected"):
                    raise _task_failed(name, t)
            running = [t for t in tasks if (t.get("Status") or {}).get("State") == "running"]
            if len(running) != replicas or any(t.get("DesiredState") != "running" for t in running):
                waiting.append(f"{name}: {len(running)} task(s) running, {replicas} wanted")
                continue
            on_rq = [n for n in rq_names() if f"-{name}-" in n]
            if len(on_rq) != replicas:
                waiting.append(f"{name}: {len(on_rq)} worker(s) listed by rq, {replicas} wanted")
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise DockerError(
                "the swarm workers did not converge: " + "; ".join(waiting),
                hint=f"docker service ps --no-trunc {' '.join(wanted)}; docker service logs NAME",
            )
        time.sleep(POLL)


def _task_failed(service: str, task: Mapping[str, Any]) -> DockerError:
    status = task.get("Status") or {}
    return DockerError(
        f"a task of {service} {status.get('State')}: {status.get('Err') or status.get('Message') or '?'}",
        hint=f"docker service ps --no-trunc {service}; docker service logs {service}",
    )


def _rq_worker_names(settings: Settings) -> list[str]:
    import redis
    from rq import Worker

    from provisioner.services import redis_url

    with redis.Redis.from_url(redis_url(settings), socket_timeout=10) as r:
        return [str(w.name) for w in Worker.all(connection=r)]


def remove_unused_secrets(client: docker.DockerClient, stack: str) -> str:
    """Remove the stack's worker-file secrets that no service uses (a rotated file's old secret)."""
    used = {
        str(s.get("SecretName"))
        for svc in client.services.list()
        for s in ((svc.attrs.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec", {}).get("Secrets") or []
    }
    gone = []
    for sec in client.secrets.list(filters={"label": f"{SECRET_LABEL}={stack}"}):
        if str(sec.name) not in used:
            sec.remove()
            gone.append(str(sec.name))
    return f"removed {', '.join(gone)}" if gone else "none to remove"


# ---------------------------------------------------------------- --remove


def plan_remove(client: docker.DockerClient, settings: Settings) -> list[Step]:
    """The stack (its workers drain: SIGTERM), its registry volume on this node, its secrets."""
    stack = stack_name(settings)
    facts = read_facts(client, stack)
    if not facts.manager:
        if facts.active:
            raise DockerError("this engine is a worker node of a swarm", hint="run invoke deploy --remove on a manager")
        return [Step("swarm", f"stack {stack}", StepState.OK, "this engine is not in a swarm: nothing deployed")]
    volume_there = bool(client.volumes.list(filters={"name": registry_volume(stack)}))
    if not facts.services and not facts.secrets and not volume_there:
        return [Step("swarm", f"stack {stack}", StepState.OK, "not deployed")]
    what = [
        f"services {', '.join(sorted(facts.services)) or 'none'}",
        f"secrets {', '.join(sorted(facts.secrets)) or 'none'}",
    ]
    return [
        Step(
            "swarm",
            f"stack {stack}",
            StepState.CHANGE,
            "remove " + "; ".join(what) + f"; volume {registry_volume(stack)} (workers drain: jobs back on sq)",
            lambda: remove_stack(client, settings),
        )
    ]


def remove_stack(client: docker.DockerClient, settings: Settings) -> str:
    """`docker stack rm`, wait until its containers and network are gone on this node, then remove its registry
    volume and its secrets."""
    from docker.errors import APIError, NotFound

    stack = stack_name(settings)
    started = time.monotonic()
    if client.services.list(filters={"label": f"{STACK_LABEL}={stack}"}):
        proc.run(["docker", "stack", "rm", stack], timeout=DEPLOY_TIMEOUT, hint=_hint(stack))
    deadline = started + REMOVE_TIMEOUT + STOP_GRACE
    label = {"label": f"{STACK_LABEL}={stack}"}
    while (
        client.services.list(filters=label)
        or client.containers.list(all=True, filters=label)
        or client.networks.list(filters=label)
    ):
        if time.monotonic() > deadline:
            raise DockerError(
                f"the stack {stack} is still there after {time.monotonic() - started:.0f} s",
                hint=f"docker stack ps {stack}; docker stack rm {stack}",
            )
        time.sleep(POLL)
    removed = []
    for volume in client.volumes.list(filters={"name": registry_volume(stack)}):
        if volume.name == registry_volume(stack):
            with contextlib.suppress(NotFound):
                volume.remove(force=True)
            removed.append(f"volume {volume.name}")
    removed += _untag_pushed(client, settings)
    for sec in client.secrets.list(filters={"label": f"{SECRET_LABEL}={stack}"}):
        try:
            sec.remove()
        except NotFound:
            continue
        except APIError as exc:
            raise DockerError(
                f"cannot remove the secret {sec.name}: {exc.explanation}", hint="docker secret ls"
            ) from exc
        removed.append(f"secret {sec.name}")
    return f"removed in {time.monotonic() - started:.1f} s" + (f": {', '.join(removed)}" if removed else "")


def _untag_pushed(client: docker.DockerClient, settings: Settings) -> list[str]:
    """Remove this engine's tags of the worker image in the stack's registry (the image keeps its own name)."""
    from docker.errors import APIError

    from provisioner.images import find_image

    image = find_image(client, settings.image("worker"))
    suffix = f":{settings.registry_port}/{settings.image_prefix}/worker:{settings.image_tag}"
    gone = []
    for tag in image.tags if image is not None else []:
        if str(tag).endswith(suffix):
            with contextlib.suppress(APIError):
                client.images.remove(str(tag))
                gone.append(f"tag {tag}")
    return gone


# ---------------------------------------------------------------- status


@dataclass(frozen=True)
class SwarmRow:
    """One service of the stack for `invoke status`: running tasks of desired replicas."""

    service: str
    running: int
    desired: int
    image: str


def swarm_rows(client: docker.DockerClient, settings: Settings) -> list[SwarmRow] | None:
    """The stack's services and their replicas, or None when it is not deployed (or this is not a manager)."""
    stack = stack_name(settings)
    info = client.info().get("Swarm") or {}
    if not info.get("ControlAvailable"):
        return None
    services = client.services.list(filters={"label": f"{STACK_LABEL}={stack}"})
    if not services:
        return None
    rows = []
    for s in services:
        spec = spec_of(s.attrs)
        running = sum(1 for t in s.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running")
        rows.append(SwarmRow(str(s.name), running, spec.replicas, _short_ref(spec.image)))
    return sorted(rows, key=lambda row: row.service)
