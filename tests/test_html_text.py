from embedscale.engine.sources.html_text import visible_text


def test_keeps_visible_text_and_drops_scripts_styles_and_head():
    html = """<html><head><title>Hidden title</title><style>p {color: red}</style>
    <script>var secret = 1;</script></head>
    <body><h1>Heading</h1><p>First &amp; second</p><noscript>no js</noscript>
    <div>Block<br>next line</div><script>alert('x')</script></body></html>"""
    text = visible_text(html)
    assert "Heading" in text and "First & second" in text and "next line" in text
    for hidden in ("secret", "alert", "color: red", "Hidden title", "no js"):
        assert hidden not in text
    assert text.splitlines()[0] == "Heading"


def test_inline_elements_do_not_break_words():
    assert visible_text("<p>embed<b>scale</b> runs</p>") == "embedscale runs"
