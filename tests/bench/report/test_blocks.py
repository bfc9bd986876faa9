"""The report's typed blocks through the one renderer of each format, on a hand-made table."""

import pandas as pd

from bench.report.blocks import (
    Alert,
    Bullets,
    Figure,
    Heading,
    Paragraph,
    Table,
    render_html,
    render_latex,
    render_markdown,
    write_tables,
)


def table() -> Table:
    frame = pd.DataFrame(
        {"pseudo mIoU": ["43.5 ± 7.3", "46.2 ± 2.6"], "Δ pseudo mIoU": ["", "+2.7 [-3.0, 8.9]"]},
        index=pd.Index(["vit-pcm", "tkp_pcl<b>"], name="variant"),
    )
    bold = pd.DataFrame([[False, False], [True, False]], index=frame.index, columns=frame.columns)
    data = pd.DataFrame({"pseudo_miou_mean": [0.435, 0.462]}, index=pd.Index(["vit-pcm", "tkp_pcl<b>"], name="group"))
    return Table(frame, "smoke: mIoU (%), mean ± std", name="main", data=data, bold=bold)


def test_one_table_block_in_every_format(tmp_path):
    blocks = [
        Heading("Report", 1),
        Alert("two seeds missing"),
        Paragraph("a < b"),
        table(),
        Bullets(("one", "two")),
        Table(pd.DataFrame({"n": [3]}), "hidden", name="status", show=False),
    ]
    md = render_markdown(blocks, tmp_path)
    assert md.startswith("# Report\n\n> **Warning:** two seeds missing\n\na < b\n\n|")
    assert "| **46.2 ± 2.6** |" in md and "*smoke: mIoU (%), mean ± std*" in md and "- one\n- two" in md
    assert "hidden" not in md
    page = render_html(blocks, "t")
    assert "<caption>smoke: mIoU (%), mean ± std</caption>" in page and "<b>46.2 ± 2.6</b>" in page
    assert "tkp_pcl&lt;b&gt;" in page and "<p>a &lt; b</p>" in page and "<ul><li>one</li><li>two</li></ul>" in page
    tex = render_latex(table(), "tab:x")
    assert r"\toprule" in tex and r"\textbf{46.2 $\pm$ 2.6}" in tex and r"$\Delta$ pseudo mIoU" in tex
    assert r"tkp\_pcl<b>" in tex and r"\caption{smoke: mIoU (\%), mean $\pm$ std}" in tex and "±" not in tex
    written = write_tables(blocks, tmp_path / "tables", "smoke")
    assert [p.name for p in written] == ["main.csv", "main.tex", "status.csv", "status.tex"]
    assert pd.read_csv(tmp_path / "tables/main.csv", index_col=0)["pseudo_miou_mean"].tolist() == [0.435, 0.462]
    assert r"\label{tab:smoke-main}" in (tmp_path / "tables/main.tex").read_text()


def test_figure_block_markdown_relative_html_embedded(tmp_path):
    from PIL import Image

    (tmp_path / "plots").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "plots/a.png")
    blocks = [Figure(tmp_path / "plots/a.png", "a caption")]
    assert "![a caption](plots/a.png)\n\n*a caption*" in render_markdown(blocks, tmp_path)
    assert "src='data:image/png;base64," in render_html(
        blocks, "t"
    ) and "<figcaption>a caption</figcaption>" in render_html(blocks, "t")
