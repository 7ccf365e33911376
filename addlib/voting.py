"""People's votes for the preference study: a JupyterLab widget (ipywidgets) that shows the study's blinded
pairs one at a time, asks the paper's two questions and appends each answer to the vote file
(preference.append_vote). notebooks/vote.ipynb opens it on the preference stage's study; `dvc repro` then
reports the votes beside the automatic raters'.

    from addlib.voting import Study, VotingWidget
    VotingWidget(Study.load("models/preference"), "votes/human.jsonl", rater="ana").show()
"""
from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import torch

from . import preference as P

QUESTION_TEXT = {"prompt": "Which image follows the prompt better?",
                 "quality": "Which image has the higher image quality?"}


@dataclasses.dataclass
class Study:
    """The preference stage's study: every model's images (uint8), the captions and the blinded pairs."""
    images: dict[str, torch.Tensor]
    captions: list[str]
    seeds: int
    pairs: list[P.Pair]

    @classmethod
    def load(cls, folder: str | Path) -> "Study":
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / "study.json").read_text())
        return cls(load_file(str(folder / "images.safetensors")), meta["captions"], meta["seeds"],
                   [P.Pair(**q) for q in meta["pairs"]])

    def image(self, model: str, pair: P.Pair) -> torch.Tensor:
        return self.images[model][pair.prompt * self.seeds + pair.seed]

    def caption(self, pair: P.Pair) -> str:
        return self.captions[pair.prompt * self.seeds + pair.seed]


def png_bytes(img: torch.Tensor, size: int = 160) -> bytes:
    """A (C, H, W) uint8 image as PNG bytes, upscaled (nearest) to ``size`` pixels for the screen."""
    from PIL import Image

    a = img.permute(1, 2, 0).numpy()
    pil = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)
    buf = io.BytesIO()
    pil.resize((size, size), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


class VotingWidget:
    """One blinded pair at a time: the prompt, the two images, the two questions with left / right / tie.
    When both questions are answered, both votes are appended and the next pair this rater has not judged is
    shown. Votes already in the file for this rater are skipped, so a session can be resumed."""

    def __init__(self, study: Study, votes_path: str | Path, rater: str):
        import ipywidgets as W

        if not rater.strip():
            raise ValueError("give a rater id (any name; it tells raters apart in the results)")
        self.study, self.path, self.rater = study, Path(votes_path), rater
        self.by_id = {q.id: q for q in study.pairs}
        done = {v.pair for v in P.read_votes(self.path, self.by_id) if v.rater == rater and v.question == "quality"}
        self.todo = [q for q in study.pairs if q.id not in done]
        self.answers: dict[str, str] = {}
        self.prompt = W.HTML()
        self.left, self.right = W.Image(format="png"), W.Image(format="png")
        self.status = W.HTML()
        self.buttons: dict[str, dict[str, W.Button]] = {}
        rows = []
        for q in P.QUESTIONS:
            self.buttons[q] = {c: W.Button(description=c) for c in P.CHOICES}
            for c, b in self.buttons[q].items():
                b.on_click(lambda _b, q=q, c=c: self.answer(q, c))
            rows.append(W.HBox([W.Label(QUESTION_TEXT[q])] + list(self.buttons[q].values())))
        self.box = W.VBox([self.prompt, W.HBox([self.left, self.right]), *rows, self.status])
        self._show()

    @property
    def current(self) -> P.Pair | None:
        return self.todo[0] if self.todo else None

    def answer(self, question: str, choice: str) -> None:
        if self.current is None:
            return
        self.answers[question] = choice
        for c, b in self.buttons[question].items():
            b.button_style = "info" if c == choice else ""
        if set(self.answers) == set(P.QUESTIONS):
            for q in P.QUESTIONS:
                P.append_vote(self.path, P.Vote(self.rater, self.current.id, q, self.answers[q], P.now()), self.by_id)
            self.todo.pop(0)
            self.answers = {}
            self._show()

    def _show(self) -> None:
        for group in self.buttons.values():
            for b in group.values():
                b.button_style = ""
        pair = self.current
        total = len(self.study.pairs)
        if pair is None:
            self.prompt.value = "<b>All pairs judged. Thank you!</b> Run <code>dvc repro preference</code>."
            self.status.value = f"{total} of {total} pairs judged by {self.rater}"
            return
        self.prompt.value = f"<b>Prompt:</b> {self.study.caption(pair)}"
        self.left.value = png_bytes(self.study.image(pair.left, pair))
        self.right.value = png_bytes(self.study.image(pair.right, pair))
        self.status.value = f"{total - len(self.todo)} of {total} pairs judged by {self.rater}"

    def show(self):
        from IPython.display import display

        display(self.box)
        return self
