import pytest

from megatron_gm.data.tokenizer import build_tokenizer
from megatron_gm.data.train_tokenizer import main as train_main
from megatron_gm.errors import GMError
from tests.fixtures import make_corpus, write_jsonl


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("tok") / "corpus.jsonl", n_docs=300)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_train_deterministic_and_round_trip(corpus, tmp_path, model_type):
    for name in ("a", "b"):
        rc = train_main(
            [
                "--input",
                str(corpus),
                "--model-prefix",
                str(tmp_path / name),
                "--vocab-size",
                "400",
                "--model-type",
                model_type,
            ]
        )
        assert rc == 0
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert (tmp_path / "a.vocab").read_text().count("\n") == 400
    tok = build_tokenizer("GPTSentencePieceTokenizer", str(tmp_path / "a.model"))
    for text in ["Hello  world\n\n  x\tY", "naïve café — 😀 ünïcödé", "  leading and trailing  "]:
        ids = tok.tokenize(text)
        assert ids and max(ids) < 400
        assert tok.detokenize(ids) == text


def test_seed_and_max_docs_change_the_model(corpus, tmp_path):
    train_main(["--input", str(corpus), "--model-prefix", str(tmp_path / "full"), "--vocab-size", "400"])
    train_main(
        [
            "--input",
            str(corpus),
            "--model-prefix",
            str(tmp_path / "few"),
            "--vocab-size",
            "400",
            "--max-docs",
            "20",
        ]
    )
    assert (tmp_path / "full.model").read_bytes() != (tmp_path / "few.model").read_bytes()


def test_refuses_existing_and_empty_input(corpus, tmp_path, capsys):
    args = ["--input", str(corpus), "--model-prefix", str(tmp_path / "m"), "--vocab-size", "400"]
    assert train_main(args) == 0
    before = (tmp_path / "m.model").read_bytes()
    assert train_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "m.model").read_bytes() == before
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"other": "x"}])
    assert (
        train_main(["--input", str(empty), "--model-prefix", str(tmp_path / "e"), "--vocab-size", "400"]) == 2
    )
    assert not (tmp_path / "e.model").exists()


def test_missing_tokenizer_model_is_a_clear_error(tmp_path):
    with pytest.raises(GMError, match="tokenizer model not found"):
        build_tokenizer("SentencePieceTokenizer", str(tmp_path / "nope.model"))
