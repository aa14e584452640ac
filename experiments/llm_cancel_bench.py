"""How long a request waits behind one the client gave up on, by ``llama-server`` batch size (issue 13).

A decision that exceeds the manager's timeout is abandoned, but llama-server notices the cancellation
only between prompt batches: until then it holds the only slot, and the next decision queues behind it.
For each batch size this starts the server, sends a ~2,000-token prompt with a 3 s client timeout, then
at once a short request, and prints the short request's latency, measured in one run.

::

    python experiments/llm_cancel_bench.py [MODEL] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import openai

from rl_manager.llm_server import LlamaServer
from rl_manager.models import get_model, model_path

LONG = "Summarise the following training log in one sentence.\n" + "step 1000 return -3.2 loss 0.41\n" * 200


def latency_behind_abandoned(batch_size: int, model: str, threads: int) -> float:
    with LlamaServer(model_path(get_model(model)), threads=threads, batch_size=batch_size) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        try:
            client.with_options(timeout=3.0).chat.completions.create(
                model=server.model, messages=[{"role": "user", "content": LONG}], max_tokens=8
            )
        except openai.APITimeoutError:
            pass  # abandoned, as the manager abandons a late decision
        start = time.perf_counter()
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="qwen2.5-coder-0.5b", help="a pulled model (rl-manager llm list)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    rows = {b: latency_behind_abandoned(b, args.model, args.threads) for b in (2048, 256)}
    for b, s in rows.items():
        print(f"batch size {b:5d}: a short request waited {s:5.1f} s behind an abandoned long one")
    print(f"ratio 2048/256: {rows[2048] / rows[256]:.1f}")


if __name__ == "__main__":
    main()
