import os

# torch.compile's inductor compiles in this process instead of a pool of compile subprocesses: the
# xdist workers run on two cores already, and no background process outlives a test. Set before
# torch._inductor.config is first imported, which reads it.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

_HYPOTHESIS_HOME: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis keeps its cache of constants and its example database in ``./.hypothesis`` of
    whatever folder the suite runs from (written at collection, even when no property runs): here
    in a folder of the run's own, removed at its end."""
    try:
        from hypothesis.configuration import set_hypothesis_home_dir
    except ImportError:
        return
    _HYPOTHESIS_HOME.append(tempfile.mkdtemp(prefix="local_reg_hypothesis_"))
    set_hypothesis_home_dir(_HYPOTHESIS_HOME[-1])


def pytest_unconfigure(config: pytest.Config) -> None:
    while _HYPOTHESIS_HOME:
        shutil.rmtree(_HYPOTHESIS_HOME.pop(), ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    # Two xdist workers on two cores: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True, scope="session")
def _hypothesis_draws_independent_of_the_loaded_modules():
    """Hypothesis mixes into its draws numeric literals harvested from every local module loaded in
    the process (its "local constants"), so the examples of a derandomized property would depend on
    which test files an xdist worker ran first and on any constant added to ``local_reg``: a guard
    of tests/test_properties.py found an outcome in one worker and not in another. Without local
    constants the draws depend only on the strategies, and a failure in CI repeats here. Hypothesis
    keeps this in a private module; where a version moves it, its default stays (the properties
    still hold, only their examples vary)."""
    try:
        from hypothesis.internal.conjecture import providers

        providers.Constants()  # an empty set of constants, as this version builds one
        cache = providers.CONSTANTS_CACHE.cache
        patchable = hasattr(providers, "_get_local_constants")
    except (ImportError, AttributeError, TypeError):
        patchable = False
    if not patchable:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(providers, "_get_local_constants", providers.Constants)
        cache.clear()
        yield
    cache.clear()
