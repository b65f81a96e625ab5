"""The one Markdown table writer (llmrec table and the experiments' reports)."""

import pytest

from llmrec.utils.markdown import markdown_table


def test_markdown_table_lines():
    lines = markdown_table("run | speed-up | n", "-lr", [["a", "", 3], ["b", "2.00x", 10]])
    assert lines == [
        "| run | speed-up | n |",
        "|---|:---|---:|",
        "| a |  | 3 |",
        "| b | 2.00x | 10 |",
    ]
    assert markdown_table(["x"], "r", []) == ["| x |", "|---:|"]


@pytest.mark.parametrize("align", ["-", "-rr", "-x"])
def test_markdown_table_refuses_an_align_that_does_not_fit_the_columns(align):
    with pytest.raises(ValueError, match="one of"):
        markdown_table(["a", "b"], align, [])
