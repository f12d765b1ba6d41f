from rlm.core.parsing import find_code_blocks, find_final_line, strip_code


def test_repl_and_python_fences_are_both_code():
    text = "```repl\nx = 1\n```\nthen\n```python\ny = 2\n```"
    assert [b.code for b in find_code_blocks(text)] == ["x = 1", "y = 2"]


def test_other_languages_are_not_run():
    text = "```bash\nrm -rf /\n```\n```json\n{\"a\": 1}\n```"
    assert find_code_blocks(text) == []


def test_fence_inside_a_string_literal_does_not_cut_the_block():
    code = 's = """\n```\nnot the end\n```\n"""\nprint(len(s))'
    blocks = find_code_blocks(f"```repl\n{code}\n```\nafter")
    assert [b.code for b in blocks] == [code]


def test_inline_backticks_inside_code_are_kept():
    code = 'fence = "```"\nprint(fence)'
    assert [b.code for b in find_code_blocks(f"```python\n{code}\n```")] == [code]


def test_unclosed_fence_runs_to_the_end():
    assert [b.code for b in find_code_blocks("```repl\nprint(1)\nprint(2)")] == [
        "print(1)\nprint(2)"
    ]


def test_unlabelled_block_must_parse_as_python():
    assert [b.code for b in find_code_blocks("```\nprint(1)\n```")] == ["print(1)"]
    assert find_code_blocks("```\nthis is not python at all\n```") == []


def test_final_line_alone_counts():
    assert find_final_line("Done.\nFINAL(42)") == ("FINAL", "42")
    assert find_final_line("FINAL_VAR(answer)") == ("FINAL_VAR", "answer")


def test_final_in_prose_never_fires():
    prose = (
        "I will call FINAL(answer) once I know the answer.\n"
        "Plan: first count, then FINAL(count).\n"
        "- FINAL(x) is how I submit\n"
        "FINAL(answer) when done"
    )
    assert find_final_line(prose) is None


def test_final_inside_code_is_not_a_final_line():
    text = "```repl\nFINAL(1)\n```"
    assert find_final_line(text) is None


def test_unbalanced_final_line_is_ignored():
    assert find_final_line("FINAL(a)) + (b") is None


def test_strip_code_keeps_prose():
    assert strip_code("hello\n```repl\nx=1\n```\nbye").split() == ["hello", "bye"]


def test_final_line_inside_a_non_code_fence_is_ignored():
    assert find_final_line("Example:\n```text\nFINAL(42)\n```") is None


def test_final_line_inside_an_html_comment_is_ignored():
    assert find_final_line("Working on it.\n<!-- \nFINAL(x)\n-->") is None
    assert find_final_line("<!-- FINAL(x) -->") is None
    assert find_final_line("still thinking <!-- hidden\nFINAL(x)") is None  # never closed
    # outside the comment it still counts, on the lines around it
    assert find_final_line("<!-- note -->\nFINAL(42)") == ("FINAL", "42")
    assert find_final_line("<!--\nFINAL(1)\n-->\nFINAL(2)") == ("FINAL", "2")
    # a comment marker inside code hides nothing
    assert find_final_line("```repl\ns = '<!--'\n```\nFINAL(3)") == ("FINAL", "3")
