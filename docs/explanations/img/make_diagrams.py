"""Draw the two method diagrams of the explanations pages (illmrec.svg, histllm.svg).

Run from the repository root:  python docs/explanations/img/make_diagrams.py
The SVGs are committed; re-run this script after editing it. Output is deterministic (no dates, fixed ids).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = Path(__file__).resolve().parent
plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "llmrec", "font.size": 9})

FROZEN = "#dfe7f2"  # frozen parts (the LLM, the encoders)
TRAINED = "#fde2c4"  # trained parts
DATA = "#ffffff"  # inputs and outputs


def box(ax, x, y, w, h, text, color=DATA, bold=False):
    ax.add_patch(
        FancyBboxPatch(
            (x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="#333333", lw=1
        )
    )
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontweight="bold" if bold else "normal")


def arrow(ax, start, end, text=None):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color="#333333", lw=1))
    if text:
        ax.text(
            (start[0] + end[0]) / 2,
            (start[1] + end[1]) / 2 + 0.12,
            text,
            ha="center",
            fontsize=8,
            color="#444444",
        )


def legend(ax, x, y):
    box(ax, x, y, 0.9, 0.35, "frozen", FROZEN)
    box(ax, x + 1.0, y, 0.9, 0.35, "trained", TRAINED)


def canvas(width, height):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width * 1.25)
    ax.set_ylim(0, height * 1.25)
    ax.axis("off")
    return fig, ax


def illmrec() -> None:
    fig, ax = canvas(9.6, 5.0)
    # inputs: one history item = title text + its picture
    box(ax, 0.2, 4.9, 2.4, 0.6, "history items\n(title + picture)")
    box(ax, 0.2, 3.8, 2.4, 0.55, "image encoder", FROZEN)
    arrow(ax, (1.4, 4.9), (1.4, 4.35))
    box(ax, 0.2, 2.8, 2.4, 0.55, "adaptor (MLP)\nd_img -> d_llm", TRAINED)
    arrow(ax, (1.4, 3.8), (1.4, 3.35))
    box(
        ax,
        3.2,
        2.5,
        4.6,
        1.3,
        "{Title: t1, Visual representation: [VISUAL]}, ...\n"
        "one [VISUAL] token per item\n... a recommendation token: [REC]",
    )
    arrow(ax, (2.6, 3.05), (3.2, 3.05), "")
    box(ax, 3.2, 0.9, 4.6, 1.0, "LLM (frozen; LoRA optional)", FROZEN, bold=True)
    arrow(ax, (5.5, 2.5), (5.5, 1.9))
    # IRE head
    box(ax, 8.4, 1.0, 2.7, 0.8, "[REC] last hidden state\n-> user projectors", TRAINED)
    arrow(ax, (7.8, 1.4), (8.4, 1.4), "IRE")
    box(ax, 8.4, 2.4, 2.7, 0.95, "item projectors over\nimage / CF / text\nfeatures of every item", TRAINED)
    box(ax, 8.4, 4.0, 2.7, 0.7, "scores = sum of dot\nproducts, whole catalog")
    arrow(ax, (9.75, 1.8), (9.75, 2.4))
    arrow(ax, (9.75, 3.35), (9.75, 4.0))
    # ILA branch
    box(
        ax,
        3.2,
        4.3,
        4.6,
        0.9,
        "ILA: the same history + a question about the\nnext item -> answer text (loss on answer tokens)",
    )
    arrow(ax, (5.5, 4.3), (5.5, 3.8))
    ax.text(
        0.2,
        0.25,
        "training loss = IRE (BCE, one negative per feature type) + ILA (next-token loss on the answer)",
    )
    legend(ax, 9.2, 5.4)
    fig.savefig(HERE / "illmrec.svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)


def histllm() -> None:
    fig, ax = canvas(9.6, 5.0)
    box(ax, 0.2, 4.9, 2.6, 0.6, "n liked items\n(KE text + picture)")
    box(ax, 0.2, 3.75, 2.6, 0.65, "LLM word embeddings\n+ VMA image token", FROZEN)
    arrow(ax, (1.5, 4.9), (1.5, 4.4))
    box(ax, 0.2, 2.65, 2.6, 0.65, "UHEM history encoder\n(GRU or Transformer)", TRAINED)
    arrow(ax, (1.5, 3.75), (1.5, 3.3))
    box(ax, 0.2, 1.55, 2.6, 0.6, "ONE [HIST] token\n(whatever n is)", TRAINED)
    arrow(ax, (1.5, 2.65), (1.5, 2.15))
    box(ax, 3.4, 4.6, 3.2, 0.9, "MF vectors (256-d) -> CIA\nmapper -> [USERID], [ITEMID]", TRAINED)
    box(ax, 7.1, 4.6, 3.9, 0.9, "target item: KE text + picture\n-> VMA mapper -> [VISUAL]", TRAINED)
    box(
        ax,
        3.4,
        2.6,
        7.6,
        1.35,
        "#Question: A user has given high ratings to the following\n"
        "movies: [HIST]. ... the feature [USERID] ... the movie with the\n"
        "description as follows: <text>[VISUAL] with the feature [ITEMID]?\n"
        'Answer with "Yes" or "No". \\n#Answer:',
    )
    arrow(ax, (2.8, 1.85), (3.4, 3.0))
    arrow(ax, (5.0, 4.6), (5.0, 3.95))
    arrow(ax, (9.0, 4.6), (9.0, 3.95))
    box(ax, 3.4, 0.9, 4.0, 1.0, "LLM + LoRA\n(LoRA: step 1 only)", FROZEN, bold=True)
    arrow(ax, (5.4, 2.6), (5.4, 1.9))
    box(ax, 8.0, 0.95, 3.0, 0.9, 'P(Yes) from the "Yes" / "No"\nlogits -> BCE, AUC / UAUC')
    arrow(ax, (7.4, 1.4), (8.0, 1.4))
    ax.text(
        0.2, 0.25, "step 1: LoRA on the text-only prompt; step 2: LoRA frozen, the encoder and mappers train"
    )
    legend(ax, 9.2, 5.75)
    fig.savefig(HERE / "histllm.svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    illmrec()
    histllm()
    print("wrote", HERE / "illmrec.svg", HERE / "histllm.svg")
