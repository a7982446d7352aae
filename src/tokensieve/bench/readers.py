"""Reader models that answer from a (compressed) prompt: teacher-forced log-likelihood of
the gold answer, greedy answers, multiple choice by likelihood, and prefill time."""

from __future__ import annotations

import time

import torch

from ..models import load_causal_lm

TEMPLATES = {
    "math_qa": "{context}\n\nProblem: {question}\nAnswer:",
    "default": "{context}\n\nAnswer the question with a short phrase from the text above.\n"
               "Question: {question}",
}


def build_prompt(task: str, context: str, question: str) -> str:
    """The reader's user message (math: a plain few-shot continuation)."""
    return TEMPLATES.get(task, TEMPLATES["default"]).format(context=context, question=question)


def text_ends_plain(prompt: str) -> bool:
    """Few-shot prompts end with 'Answer:' and take a space before the answer."""
    return prompt.endswith("Answer:")


class Reader:
    """A causal LM used as a reader (loaded once; bfloat16 where the CPU runs it fast)."""

    def __init__(self, name: str = "default", dtype: str = "auto") -> None:
        loaded = load_causal_lm(name, dtype=dtype)
        self.name, self.model, self.tokenizer = name, loaded.model, loaded.tokenizer
        self.bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _chat(self, text: str) -> bool:
        """Instruct readers with a chat template answer far better in it; few-shot
        continuations (ending in 'Answer:') and base models read plain text."""
        return bool(getattr(self.tokenizer, "chat_template", None)) and not text_ends_plain(text)

    def _ids(self, text: str) -> list[int]:
        if self._chat(text):
            chat = [{"role": "user", "content": text}]
            rendered = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True,
                                                          tokenize=False)
            return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        if not text_ends_plain(text):
            text += "\nAnswer:"
        return self.bos + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def answer_nll(self, prompt: str, answer: str) -> float:
        """-log p(answer | prompt) in nats, summed over the answer's tokens."""
        head = self._ids(prompt)
        lead = "" if self._chat(prompt) else " "
        tail = self.tokenizer(lead + answer.strip(), add_special_tokens=False)["input_ids"]
        x = torch.tensor([head + tail])
        logits = self.model(input_ids=x).logits[0, len(head) - 1 : -1].float()
        return float(torch.nn.functional.cross_entropy(logits, x[0, len(head):], reduction="sum"))

    def choose(self, prompt: str, choices: list[str]) -> int:
        """Index of the choice with the highest mean log-likelihood per token."""
        scores = []
        for c in choices:
            n = max(1, len(self.tokenizer(" " + c.strip(), add_special_tokens=False)["input_ids"]))
            scores.append(-self.answer_nll(prompt, c) / n)
        return max(range(len(choices)), key=scores.__getitem__)

    @torch.inference_mode()
    def generate(self, prompt: str, max_new_tokens: int = 16) -> str:
        x = torch.tensor([self._ids(prompt)])
        out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                  max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, x.shape[1]:], skip_special_tokens=True)

    @torch.inference_mode()
    def prefill_seconds(self, prompt: str, repeats: int = 1) -> float:
        x = torch.tensor([self._ids(prompt)])
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            self.model(input_ids=x)
            best = min(best, time.perf_counter() - t)
        return best
