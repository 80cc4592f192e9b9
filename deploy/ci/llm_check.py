"""A CI step that asks the platform a question with the CI team's key.

Reads ``OPENAI_BASE_URL`` (https://llm.example.com/v1) and ``OPENAI_API_KEY`` (a key of the
CI team: ``llmplat keys create --team ci --name github-actions --expires-in 90d``), sends the
prompt given on the command line (or stdin), prints the answer and its token usage. A 429 from
the CI team's quota is retried after the Retry-After the gateway sends, a few times, then the
step fails with the gateway's message.

    python deploy/ci/llm_check.py --model mixtral-8x22b-instruct "Summarise: $(git log -1)"
"""

from __future__ import annotations

import argparse
import sys

import openai


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", nargs="?", help="the question (default: stdin)")
    parser.add_argument("--model", required=True, help="a model the CI team may use")
    parser.add_argument("--system", help="instructions sent ahead of the prompt")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--retries", type=int, default=4, help="retries of 429/5xx answers")
    args = parser.parse_args(argv)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    messages = [{"role": "user", "content": prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    # The SDK honours the gateway's Retry-After on 429 and retries 5xx with backoff.
    client = openai.OpenAI(max_retries=args.retries, timeout=600)
    try:
        reply = client.chat.completions.create(
            model=args.model,
            messages=messages,
            max_tokens=args.max_tokens,
        )
    except openai.APIStatusError as exc:
        print(f"llmplat answered {exc.status_code}: {exc.message}", file=sys.stderr)
        return 1
    except openai.APIConnectionError as exc:
        print(f"cannot reach {client.base_url}: {exc}", file=sys.stderr)
        return 1
    print(reply.choices[0].message.content)
    usage = reply.usage
    if usage is not None:
        print(
            f"[{reply.model}: {usage.prompt_tokens} prompt + {usage.completion_tokens} "
            "completion tokens, billed to the CI team]",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
