"""The hostile-input corpus: every case in tests/corpus/manifest.yaml yields its code.

Desired-state cases are parsed beside good deployments, which must come out identical to
their parse alone and be left untouched by the plan; package and signature cases are
prepared in a store that already holds a good package, which must stay intact, and
nothing may be written outside the store. See the manifest's header for the format.
"""

# Fixtures are imported from tests.support.pkgfixtures, so test arguments shadow them:
# ruff: noqa: F811

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from margo_lite import archive, composedoc, desired, planner, policy, valueclass
from margo_lite.config import PolicyConfig
from margo_lite.errors import DESIRED_STATE_CODES, MargoLiteError, PackageError, PolicyError
from tests.corpus import corpus
from tests.corpus.corpus import Case
from tests.support import plans
from tests.support.pkgfixtures import (  # noqa: F401 (fixtures)
    cache_leftovers,
    make_store,
    pgp_keys,
    test_ca,
)
from tests.test_planner import run

CASES = corpus.load_manifest()


def params(kind: str) -> list:
    return [pytest.param(case, id=case.name) for case in CASES if case.kind == kind]


# --- the manifest itself --------------------------------------------------------------------


def test_the_corpus_is_large_varied_and_small_on_disk():
    kinds = {kind: len(params(kind)) for kind in corpus.KINDS}
    assert len(CASES) >= 60
    assert all(count >= 5 for count in kinds.values()), kinds
    stored = [p for p in corpus.HERE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in stored) < 1 << 20


def test_every_stored_file_belongs_to_a_case():
    """A file no case names would be dead weight, or a case someone forgot to list."""
    named = {f for c in CASES if c.kind == "desired-state" for f in c.files}
    named |= set(corpus.GOOD_PATHS)
    assert set(corpus.iter_files(corpus.DESIRED)) == named
    composed = {f for c in CASES if c.kind in ("compose", "policy", "canonical") for f in c.files}
    assert set(corpus.iter_files(corpus.COMPOSE)) == composed


def test_desired_state_cases_can_share_one_folder():
    """Each case lives in its own folder with its own ids: all of them can be fed at once."""
    ids: list[str] = []
    for case in CASES:
        if case.kind != "desired-state":
            continue
        assert case.code in DESIRED_STATE_CODES or case.code == "UNSUPPORTED_PROFILE", case
        assert all(f.startswith(case.name + "/") for f in corpus.desired_files(case)), case
        ids += sorted({i.lower() for i in case.ids})
    good = desired.parse_files(corpus.good_files()).deployments
    ids += [d.id for d in good]
    assert sorted(i for i in ids if ids.count(i) > 1) == []
    # all files together stay below the parser's bound on one poll
    assert sum(map(len, corpus.desired_tree().values())) < desired.DEFAULT_LIMITS.max_total_bytes


# --- desired-state documents ----------------------------------------------------------------


@pytest.fixture(scope="module")
def good_alone() -> tuple[desired.DesiredState, dict[str, planner.DeploymentRecord]]:
    """The good deployments parsed alone, and the records after installing them."""
    state = desired.parse_files(corpus.good_files())
    assert state.failures == () and len(state.deployments) == 2
    return state, run(planner.plan(state, {}), {})


def check_case_failures(case: Case, state: desired.DesiredState) -> None:
    mine = [f for f in state.failures if f.source.startswith(case.name + "/")]
    if case.stage == "plan":
        assert mine == [], mine
        failed = {
            dp.id: dp.failure.code for dp in planner.plan(state, {}).deployments if dp.failure
        }
        assert {i: failed.get(i) for i in case.ids} == {i: case.code for i in case.ids}
        return
    codes = {f.error.code for f in mine}
    assert case.code in codes and codes <= {case.code, *case.also}, [str(f.error) for f in mine]
    assert {f.deployment_id for f in mine} == (set(case.ids) or {None})
    for failure in mine:  # a coded, located message; never a traceback
        assert str(failure.error).startswith(case.name + "/")
    headline = [f.error for f in mine if f.error.code == case.code]
    if "field" in case.spec:
        assert {e.field for e in headline} == {case.spec["field"]}
    assert all(case.spec.get("says", "") in str(e) for e in headline), headline


def running(ids: list[str]) -> dict[str, planner.DeploymentRecord]:
    """Records of earlier, good versions of deployments `ids`, installed."""
    template = (corpus.DESIRED / "zz-good.yaml").read_bytes()
    files = {
        f"earlier/{i}.yaml": template.replace(b"id: corpus-good-last", f"id: {i}".encode())
        for i in ids
    }
    state = desired.parse_files(files)
    assert state.failures == ()
    return run(planner.plan(state, {}), {})


ELSEWHERE = "corpus-elsewhere"  # runs, and is no longer in the desired state


@pytest.mark.parametrize("case", params("desired-state"))
def test_desired_state_case(case: Case, good_alone) -> None:
    alone, installed = good_alone
    state = desired.parse_files({**corpus.good_files(), **corpus.desired_files(case)})
    check_case_failures(case, state)
    assert all(f.source.startswith(case.name + "/") for f in state.failures)
    # the good deployments come out as they do alone ...
    good = [d for d in state.deployments if d.id in installed]
    assert [(d.id, d.digest) for d in good] == [(d.id, d.digest) for d in alone.deployments]
    assert good == list(alone.deployments)
    # ... and nothing that runs is touched: not the good ones, not an earlier version of the
    # case's own deployment, and nothing else while an unreadable document might be its own
    own = list({i.lower(): i for i in reversed(case.ids)}.values())
    current = {**installed, **running([*own, ELSEWHERE])}
    p = planner.plan(state, current)
    for dep_id in installed:
        dp = plans.find(p, dep_id)
        assert dp is not None and dp.failure is None and dp.changes == () and not dp.held
    for dep_id in own:
        dp = plans.find(p, dep_id)
        assert dp is not None and dp.failure is not None and dp.changes == ()
        assert dp.failure.code in {case.code, *case.also}
    assert state.complete == bool(case.ids)
    elsewhere = plans.find(p, ELSEWHERE)
    assert elsewhere is not None and elsewhere.removal
    assert elsewhere.held == (not state.complete)
    after = run(p, current)
    assert {i: after[i] for i in installed} == installed
    for dep_id in own:  # reported Failed, while the earlier version runs on
        assert after[dep_id].state is planner.State.FAILED
        assert [(c.name, c.digest) for c in after[dep_id].components] == [
            (c.name, c.digest) for c in current[dep_id].components
        ]


def test_all_desired_state_cases_at_once(good_alone):
    """What one `margo-lite once` over tests/corpus/desired would see."""
    alone, installed = good_alone
    state = desired.parse_files(corpus.desired_tree())
    for case in CASES:
        if case.kind == "desired-state":
            check_case_failures(case, state)
    good = [d for d in state.deployments if d.id in installed]
    assert good == list(alone.deployments)
    assert not state.complete  # some cases hide their id: nothing may be removed
    p = planner.plan(state, installed)
    assert all(plans.find(p, i).changes == () for i in installed)  # type: ignore[union-attr]


def test_write_tree_writes_the_folder_the_agent_reads(tmp_path: Path) -> None:
    corpus.write_tree(tmp_path)
    written = {p: (tmp_path / p).read_bytes() for p in corpus.iter_files(tmp_path)}
    assert written == corpus.desired_tree()


# --- packages and signatures ----------------------------------------------------------------


@pytest.fixture
def store_with_good(make_store, tmp_path):
    """(store, good store, good package, its repo): the good package must survive the case.

    The good package is prepared by a store of the default configuration (it is unsigned);
    the case runs in a store of the case's configuration over the same cache.
    """

    def make(**config):
        good_store = make_store()
        repo = {"good/app.tar.gz": corpus.build_tar({"members": []}, tmp_path)}
        prepared = good_store.prepare("good/app.tar.gz", None, repo)
        return make_store(**config), good_store, prepared, repo

    return make


def check_refused(stores, location, key, repo, case: Case, tmp_path: Path) -> None:
    store, good_store, good, good_repo = stores
    outside = tmp_path / "outside"
    with pytest.raises(MargoLiteError) as caught:
        store.prepare(location, key, repo)
    assert isinstance(caught.value, PackageError), caught.value
    assert caught.value.code == case.code, caught.value
    assert case.spec.get("says", "") in caught.value.message
    assert list(outside.iterdir()) == []
    # nothing half-built is left, and the good package is still there, unchanged
    pkgs = [p for p in cache_leftovers(tmp_path / "cache") if p.count("/") == 1]
    assert pkgs == [f"pkgs/{good.digest.removeprefix('sha256:')}"]
    assert archive.tree_digest(good.path) == good.digest
    assert good_store.prepare("good/app.tar.gz", None, good_repo) == good


@pytest.mark.parametrize("case", params("package"))
def test_package_case(case: Case, store_with_good, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    stores = store_with_good(**case.spec.get("config", {}))
    location = f"{case.name}/package.tar.gz"
    repo = {location: corpus.package_bytes(case, tmp_path / "outside")}
    check_refused(stores, location, None, repo, case, tmp_path)


GARBAGE_SIGNATURE = (
    b"-----BEGIN PGP SIGNATURE-----\n\nbm90IGEgc2lnbmF0dXJl\n-----END PGP SIGNATURE-----\n"
)


@pytest.mark.parametrize("case", params("signature"))
def test_signature_case(case: Case, store_with_good, pgp_keys, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    spec = case.spec["signature"]
    stores = store_with_good(require_signature=spec.get("require", False))
    data = corpus.package_bytes(case, tmp_path / "outside")
    if case.spec.get("folder"):
        location = f"{case.name}/app"
        repo = {f"{location}/compose.yaml": corpus.GOOD_COMPOSE}
    else:
        location = f"{case.name}/package.tar.gz"
        repo = {location: data}
    signatures = {
        "vendor": lambda: pgp_keys.sign("vendor", data),
        "mallory": lambda: pgp_keys.sign("mallory", data),
        "other-bytes": lambda: pgp_keys.sign("vendor", data + b"\0"),
        "message": lambda: pgp_keys.sign("vendor", b"something else", detach=False),
        "garbage": lambda: GARBAGE_SIGNATURE,
    }
    if spec["sig"] != "none":
        repo[location + ".asc"] = signatures[spec["sig"]]()
    key = f"{case.name}/key.asc"
    if spec["key"] in ("vendor", "mallory"):
        repo[key] = pgp_keys.public(spec["key"])
    elif spec["key"] == "garbage":
        repo[key] = b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot a key\n"
    if spec["key"] == "none":
        key = None  # type: ignore[assignment]
    check_refused(stores, location, key, repo, case, tmp_path)


# --- compose files: the built-in driver and the local policy --------------------------------


def builtin_driver():
    try:
        return importlib.import_module("margo_lite.backends.builtin")
    except ImportError:
        pytest.skip("margo_lite.backends is not on this branch; the lead wires these cases")


@pytest.mark.parametrize("case", params("compose"))
def test_compose_case(case: Case) -> None:
    builtin = builtin_driver()
    with pytest.raises(MargoLiteError) as caught:
        builtin.check_supported(corpus.compose_document(case))
    assert caught.value.code == case.code, caught.value
    assert case.spec["key"] in str(caught.value)


def test_the_good_compose_file_passes_the_builtin_driver():
    builtin_driver().check_supported(yaml.safe_load(corpus.GOOD_COMPOSE))


def test_the_good_compose_file_passes_the_policy():
    """The control: the policy refuses the cases for what they ask, not for everything."""
    policy.check_compose(yaml.safe_load(corpus.GOOD_COMPOSE), PolicyConfig())


@pytest.mark.parametrize("case", params("policy"))
def test_policy_case(case: Case) -> None:
    changes = {
        k: tuple(v) if isinstance(v, list) else v for k, v in case.spec.get("policy", {}).items()
    }
    config = valueclass.replace(PolicyConfig(), **changes)
    with pytest.raises(PackageError) as caught:
        policy.check_compose(corpus.compose_document(case), config)
    assert caught.value.code == case.code, caught.value
    if case.spec.get("rule"):
        assert isinstance(caught.value, PolicyError)
        assert caught.value.rule == case.spec["rule"], caught.value
        assert caught.value.service == "web"


# --- canonical documents: package and parameters through composedoc and the policy -----------


def canonical_refusal(case: Case, tmp_path: Path) -> MargoLiteError:
    """The case as the agent handles it: parsed, built once, checked; its refusal."""
    files = corpus.canonical_files(case)
    state = desired.parse_files(files)
    assert not state.failures, state.failures  # the document itself is fine
    (component,) = state.deployments[0].components
    package = tmp_path / "app"
    package.mkdir()
    (package / "compose.yaml").write_bytes(files[f"{case.name}/app/compose.yaml"])
    with pytest.raises(MargoLiteError) as caught:
        document = composedoc.build(
            package,
            component.env,
            component.overlays,
            deployment_id=f"corpus-{case.name}",
            component="web",
            device="gw-corpus",
        )
        policy.check_compose(document, PolicyConfig(), package_dir=package.resolve())
    return caught.value


@pytest.mark.parametrize("case", params("canonical"))
def test_canonical_case(case: Case, tmp_path: Path) -> None:
    error = canonical_refusal(case, tmp_path)
    assert error.code == case.code, error
    if case.spec.get("says"):
        assert case.spec["says"] in error.message, error
    if case.spec.get("rule"):
        assert isinstance(error, PolicyError) and error.rule == case.spec["rule"], error


def test_the_canonical_control_passes(tmp_path: Path) -> None:
    """canon-plain.yaml alone, with its package-relative bind `./data:/data`, is allowed."""
    package = tmp_path / "app"
    package.mkdir()
    (package / "compose.yaml").write_bytes((corpus.COMPOSE / "canon-plain.yaml").read_bytes())
    document = composedoc.build(
        package, {}, {}, deployment_id="corpus-control", component="web", device="gw-corpus"
    )
    policy.check_compose(document, PolicyConfig(), package_dir=package.resolve())
    (mount,) = document["services"]["web"]["volumes"]
    assert mount["source"] == str(package.resolve() / "data")
