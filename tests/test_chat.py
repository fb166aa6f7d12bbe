"""Chat: templates rendered as transformers renders them, stop tokens and stop strings, the chat session and the
`plinth chat` / `plinth generate --chat` commands driven through stdin."""

from __future__ import annotations

import io
import json

import pytest

from plinth.cli.main import main
from plinth.common import PlinthError
from plinth.data.chat import render_chat
from tests.gguf_builders import train_tokenizer
from tests.lm_builders import CHATML, bigram_lm, chain, save_lm

# SmolLM2-Instruct's template (ChatML with a default system prompt), as stored in its GGUF
SMOL = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
        "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# exercises what the environment must provide: whitespace control, namespace, loop controls, tojson options and
# escaping, raise_exception, strftime_now, the generation tag, None-dropping and reasoning aliases
RICH = """{{ bos_token }}
{%- set ns = namespace(n=0) %}
{% if tools %}
Tools:
{% for tool in tools %}
{{ tool | tojson(indent=2) }}
{% endfor %}
{% endif %}
{% for m in messages %}
  {% if m.role not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + m.role) }}{% endif %}
  {% if m.role == 'assistant' %}
<|assistant|>{% generation %}{{ m.content }}{% if m.reasoning_content is defined %} [{{ m.reasoning_content }}]
{%- endif %}{% endgeneration %}{{ eos_token }}
    {% if 'tool_calls' in m %}calls={{ m.tool_calls | tojson }}{% endif %}
  {% else %}
<|{{ m.role }}|>{{ m.content | trim }}
  {% endif %}
  {% set ns.n = ns.n + 1 %}
  {% if loop.index >= 3 %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}<|assistant|>{% endif %}
n={{ ns.n }} year={{ strftime_now('%Y') }} json={{ {'a': '<b>&\\'', 'é': [1, 2]} | tojson }}
"""

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather <now> & later",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CHATS = {
    "no-system": [{"role": "user", "content": "Hi there! What's 2+2?"}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye  "}],
    "unicode": [{"role": "user", "content": "Café 日本語 😀\n\tindented"}],
    "reasoning": [{"role": "user", "content": "q"},
                  {"role": "assistant", "content": "a", "thinking": "hmm", "tool_calls": None}],
}


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=train_tokenizer("gpt2"), bos_token="<|im_start|>",
                                   eos_token="<|im_end|>")


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("chat", sorted(CHATS))
@pytest.mark.parametrize("template,tools", [(SMOL, None), (RICH, None), (RICH, TOOLS)],
                         ids=["smollm2", "rich", "rich-tools"])
def test_template_renders_as_transformers(hf_tokenizer, template, tools, chat, add_generation_prompt):
    messages = CHATS[chat]
    theirs = hf_tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False,
                                              add_generation_prompt=add_generation_prompt)
    ours = render_chat(template, messages, add_generation_prompt, "<|im_start|>", "<|im_end|>", tools=tools)
    assert ours == theirs
    assert messages == CHATS[chat]  # the caller's messages are not modified


def test_template_errors_are_one_line():
    with pytest.raises(PlinthError, match="chat template: unknown role tool"):
        render_chat(RICH, [{"role": "tool", "content": "x"}], False, "<s>", "</s>")
    with pytest.raises(PlinthError, match="chat template: "):
        render_chat("{% for m in messages %}", [{"role": "user", "content": "x"}], False, "<s>", "</s>")
    with pytest.raises(PlinthError, match="chat template: "):  # the sandbox refuses Python internals
        render_chat("{{ messages.__class__.__mro__ }}", [{"role": "user", "content": "x"}], False, "<s>", "</s>")
    with pytest.raises(PlinthError, match="no messages"):
        render_chat(CHATML, [], False, "<s>", "</s>")


# ----------------------------------------------------------------------------------------------------------------------
# Stop tokens and stop strings


def test_reply_ends_at_the_end_of_turn_token_which_is_not_shown():
    lm = bigram_lm(chain("Paris"))
    assert lm.chat([{"role": "user", "content": "capital?"}], temperature=0) == "Paris"
    expected = "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    assert lm.chat_prompt([{"role": "user", "content": "x"}]) == expected


def test_every_stop_id_ends_a_generation():
    table = {**chain("Pa", end="<|endoftext|>"), "9": "x", "x": "y", "y": "<|im_end|>"}
    lm = bigram_lm(table)
    assert lm.stop_ids == {0, 2}  # <|im_end|> from the settings, <|endoftext|> as the tokenizer's end of document
    assert lm.generate("\n", temperature=0, max_new_tokens=20) == "Pa"
    assert lm.generate("9", temperature=0, max_new_tokens=20) == "xy"
    steps = list(lm.stream_ids([lm.encode("\n"), lm.encode("9")], temperature=0, max_new_tokens=20))
    assert len(steps) == 3  # both rows finished after 3 tokens, so decoding stopped there


def test_stop_strings_cut_the_text_and_are_held_back_while_streaming():
    lm = bigram_lm(chain("abcdefgh", end="<|im_end|>"))
    assert lm.generate("\n", temperature=0, max_new_tokens=30, stop=["de"]) == "abc"
    pieces = list(lm.stream("\n", temperature=0, max_new_tokens=30, stop=["dx", "fgh"]))
    shown = "".join(p[0] for p in pieces)
    assert shown == "abcde"
    # "d" could start "dx": it was held back until "e" ruled that out, so no piece ever showed text to be taken back
    assert ["".join(p[0] for p in pieces[:i]) for i in range(len(pieces) + 1)][4] == "abc"
    assert lm.generate(["\n", "\n"], temperature=0, max_new_tokens=30, stop=["c"]) == ["ab", "ab"]


def test_chat_session_keeps_history_and_drops_old_turns_to_fit(tmp_path):
    from plinth.pipelines.text import ChatSession

    lm = bigram_lm(chain("Paris"), seq_len=96)
    session = ChatSession(lm, system="Be brief.", sampling=None, template=None)
    session.sampling.temperature, session.sampling.max_new_tokens = 0.0, 8
    for _ in range(4):
        assert "".join(session.send("Where is the capital of France?")) == "Paris"
    assert len(session.history) == 8 and session.messages()[0]["role"] == "system"
    # 4 turns do not fit a 96-token context with 8 new tokens: the oldest ones were left out of the prompt
    assert len(lm.chat_ids(session._fit())) <= 96 - 8 < len(lm.chat_ids(session.messages()))
    saved = json.loads(session.save(tmp_path / "chat.json").read_text())
    assert saved["system"] == "Be brief." and saved["messages"][-1] == {"role": "assistant", "content": "Paris"}


# ----------------------------------------------------------------------------------------------------------------------
# The commands


@pytest.fixture()
def model_dir(tmp_path):
    return save_lm(bigram_lm(chain("Paris")), tmp_path / "model")


def test_chat_command_reads_stdin(model_dir, tmp_path, monkeypatch, capsys):
    lines = ["What is the capital of France?", "/system Answer in one word.", "again?", f"/save {tmp_path / 'c.json'}",
             "/reset", "", "/nonsense", "once more", "/quit", "never read"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["chat", str(model_dir), "--temperature", "0"]) == 0
    out = capsys.readouterr()
    assert out.out == "Paris\nParis\nParis\n"
    assert "conversation cleared" in out.err and "unknown command /nonsense" in out.err
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["system"] == "Answer in one word." and [m["role"] for m in saved["messages"]] == \
        ["system", "user", "assistant", "user", "assistant"]


def test_generate_chat_one_shot(model_dir, capsys):
    assert main(["generate", str(model_dir), "--chat", "--prompts", "capital?", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "Paris\n"
    assert main(["generate", str(model_dir), "--chat", "--prompts", "a", "b", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "--- 'a'\nParis\n--- 'b'\nParis\n"


def test_chat_without_a_template_is_a_one_line_error(tmp_path, capsys):
    lm = bigram_lm(chain("Paris"))
    lm.settings.chat_template = None
    folder = save_lm(lm, tmp_path / "m")
    assert main(["chat", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "has no chat template" in err and "--template" in err and err.count("\n") == 1
    (tmp_path / "t.jinja").write_text(CHATML)
    assert main(["generate", str(folder), "--chat", "--template", str(tmp_path / "t.jinja"), "--prompts", "q",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "Paris\n"
