"""Every process fits its share of the fit cache (gs_dfd.train.fit_cache.ensure_fits with rank and world).

The processes are threads here, with a real barrier between them, and the fit is a stand-in that only records
who fitted what: no Gaussian fit runs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import gs_dfd.train.fit_cache as fc
from gs_dfd.errors import GsDfdError, Interrupted

NAMES = [f"scene_{i:02d}" for i in range(11)]
CACHED = {"scene_02", "scene_07"}


class FakeCache:
    """Which entries exist, who fitted each one, and (``lose``) entries whose fit writes nothing."""

    def __init__(self, cached: set[str], lose: frozenset[str] = frozenset()) -> None:
        self.entries = set(cached)
        self.fitted: dict[str, list[str]] = {}
        self.lose = lose
        self.lock = threading.Lock()

    def install(self, monkeypatch) -> None:
        def is_cached(scene_dir: Path, cache_root: Path, *args, **kw) -> bool:
            with self.lock:
                return scene_dir.name in self.entries

        def fit_scene(cfg) -> None:
            with self.lock:
                self.fitted.setdefault(threading.current_thread().name, []).append(cfg.scene.name)

        def record_stack(scene_dir: Path, cache_root: Path) -> None:
            if scene_dir.name not in self.lose:
                with self.lock:
                    self.entries.add(scene_dir.name)

        monkeypatch.setattr(fc, "is_cached", is_cached)
        monkeypatch.setattr(fc, "fit_scene", fit_scene)
        monkeypatch.setattr(fc, "record_stack", record_stack)


def _scene_dirs(tmp_path: Path) -> list[Path]:
    return [tmp_path / "scenes" / n for n in reversed(NAMES)]  # not sorted: the share is by sorted name


def _run_ranks(scene_dirs: list[Path], cache_root: Path, world: int) -> dict[int, object]:
    """ensure_fits on ``world`` threads as ranks sharing a barrier -> each rank's result or exception."""
    barrier = threading.Barrier(world, timeout=20)
    results: dict[int, object] = {}

    def rank_main(rank: int) -> None:
        try:
            results[rank] = fc.ensure_fits(scene_dirs, cache_root, 20, progress=False, rank=rank, world=world,
                                           barrier=barrier.wait)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            results[rank] = exc

    threads = [threading.Thread(target=rank_main, args=(r,), name=f"rank{r}") for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def test_three_ranks_fit_disjoint_shares_covering_every_uncached_scene(tmp_path, monkeypatch):
    cache = FakeCache(CACHED)
    cache.install(monkeypatch)
    dirs = _scene_dirs(tmp_path)
    results = _run_ranks(dirs, tmp_path / "fits", world=3)
    for rank in range(3):
        assert results[rank] == [tmp_path / "fits" / d.name for d in dirs], results[rank]  # scene_dirs' order
    shares = [cache.fitted.get(f"rank{r}", []) for r in range(3)]
    uncached = sorted(set(NAMES) - CACHED)
    assert sorted(sum(shares, [])) == uncached  # each uncached scene fitted exactly once ...
    assert not CACHED & set(sum(shares, []))  # ... the cached ones never
    for r, share in enumerate(shares):
        assert share == uncached[r::3]  # rank r: every third of the sorted list, from r on
    assert cache.entries == set(NAMES)


def test_one_process_fits_everything_uncached(tmp_path, monkeypatch, capsys):
    cache = FakeCache(CACHED)
    cache.install(monkeypatch)
    fc.ensure_fits(_scene_dirs(tmp_path), tmp_path / "fits", 20, progress=False)
    assert sorted(sum(cache.fitted.values(), [])) == sorted(set(NAMES) - CACHED)
    assert "fitting 9 of 11 training scenes" in capsys.readouterr().out
    cache.fitted.clear()
    fc.ensure_fits(_scene_dirs(tmp_path), tmp_path / "fits", 20, progress=False)  # all cached now
    assert cache.fitted == {}


def test_only_rank_0_says_what_it_fits(tmp_path, monkeypatch, capsys):
    """Alone (no other ranks), each sees the others' entries missing at the end: here only the message counts."""
    FakeCache(CACHED).install(monkeypatch)
    with pytest.raises(GsDfdError):
        fc.ensure_fits(_scene_dirs(tmp_path), tmp_path / "fits", 20, progress=False, rank=1, world=3)
    assert "fitting" not in capsys.readouterr().out
    FakeCache(CACHED).install(monkeypatch)
    with pytest.raises(GsDfdError):
        fc.ensure_fits(_scene_dirs(tmp_path), tmp_path / "fits", 20, progress=False, rank=0, world=3)
    assert "fitting 9 of 11 training scenes" in capsys.readouterr().out


def test_an_entry_still_missing_after_the_barrier_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    lost = "scene_05"
    FakeCache(CACHED, lose=frozenset({lost})).install(monkeypatch)
    results = _run_ranks(_scene_dirs(tmp_path), tmp_path / "fits", world=3)
    for rank in range(3):  # every rank checks, so none trains on a partial cache
        exc = results[rank]
        assert isinstance(exc, GsDfdError), exc
        assert lost in str(exc) and len(str(exc).splitlines()) == 1, str(exc)
    owner = sorted(set(NAMES) - CACHED).index(lost) % 3
    assert f"process {owner} of 3" in str(results[0])


def test_the_same_check_alone(tmp_path, monkeypatch):
    FakeCache(set(), lose=frozenset({"scene_00"})).install(monkeypatch)
    with pytest.raises(GsDfdError, match="scene_00") as info:
        fc.ensure_fits(_scene_dirs(tmp_path), tmp_path / "fits", 20, progress=False)
    assert "process" not in str(info.value)


def test_ctrl_c_during_a_share_says_resume(tmp_path, monkeypatch):
    FakeCache(CACHED).install(monkeypatch)

    def interrupted(cfg) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(fc, "fit_scene", interrupted)
    with pytest.raises(Interrupted, match="--resume") as info:
        fc.ensure_fits(_scene_dirs(tmp_path), tmp_path / "fits", 20, progress=False, rank=1, world=3)
    assert "scene_01" in str(info.value)  # rank 1's first: the second uncached scene by name


def test_share_of_partitions(tmp_path):
    todo = [tmp_path / n for n in NAMES]
    shares = [fc.share_of(todo, r, 4) for r in range(4)]
    assert sorted(sum(shares, []), key=lambda p: p.name) == todo
    assert fc.share_of(todo, 0, 1) == todo
    with pytest.raises(AssertionError):
        fc.share_of(todo, 3, 3)
