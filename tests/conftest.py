import os

# torch.compile's inductor compiles in this process instead of a pool of compile subprocesses: the
# xdist workers run on two cores already, and no background process outlives a test. Set before
# torch._inductor.config is first imported, which reads it.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    # Two xdist workers on two cores: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)
    yield
