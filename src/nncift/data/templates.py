"""Every text template of the project, in one place: one function per use.

Changing a template changes results; each template is recorded by name in the run manifest.
"""

from __future__ import annotations

from nncift.data.records import Record


def embedding_text(record: Record) -> str:
    """Text of an example for sentence embeddings (NN-CIFT): ``{instruction} {input}\\n##Answer: {output}``."""
    return f"{record.instruction} {record.input}\n##Answer: {record.output}"


def response_text(record: Record) -> str:
    """Text of an example's response alone, for the second half of the ``text+response`` network input."""
    return record.output


def delift_prompt_without_example(target: Record) -> str:
    """DELIFT zero-shot prompt for target x_i (docs/methods.md §2)."""
    return f"Instruction: Please generate a response to the following query.\n\n\nQuery: {target.query}\n"


def delift_prompt_with_example(target: Record, example: Record) -> str:
    """DELIFT one-shot prompt: candidate (x_j, y_j) shown as the example before target x_i."""
    return delift_prefix(example) + delift_query_suffix(target)


def delift_prefix(example: Record) -> str:
    """The part of the one-shot prompt that depends only on the candidate (reusable key/value cache)."""
    return delift_example_header() + delift_example(example)


def delift_example_header() -> str:
    """The fixed opening of the one-shot prompt (the same for every candidate)."""
    return (
        "Instruction:\nUse the following example as a guide to answer the query in the same format "
        "and style, providing a clear and concise response.\n\n\n"
    )


def delift_example(example: Record) -> str:
    """The candidate (x_j, y_j) shown in the one-shot prompt, after :func:`delift_example_header`."""
    return f"Example:\n{example.query}\n{example.output}\n\n\n"


def delift_query_suffix(target: Record) -> str:
    """The part of the one-shot prompt that depends only on the target."""
    return f"Query:\n{target.query}\n"


SELECTIT_RATING_INSTRUCTIONS: tuple[str, ...] = (
    "Rate how well the response below answers the instruction, on a scale from 1 (very poor) to 5 "
    "(excellent). Reply with one digit.",
    "On a scale of 1 to 5, where 1 is useless and 5 is ideal, how good is the following response "
    "to its instruction? Give a single number.",
    "Judge the quality of this answer to the given instruction. Score it from 1 (worst) to 5 (best) "
    "and answer with the score only.",
    "How helpful, correct and complete is the response to the instruction below? Grade it 1, 2, 3, "
    "4 or 5, with 5 the highest.",
    "Please evaluate the following instruction and response pair and give the response a rating "
    "between 1 and 5 (5 meaning it could not be better).",
)
"""K = 5 paraphrases of one rating request (SelectIT sentence-level reflection), the project's own words."""


def selectit_prompt(rating_instruction: str, record: Record) -> str:
    """SelectIT rating prompt (docs/methods.md §3): rating instruction, the pair, then the answer cue.

    ``{rating_instruction}\\nInstruction:{query}\\nResponse:{output}\\nThe answer is: \\n``: one newline
    between the response and the cue, as in both public reference copies (the SelectIT authors' and
    the NN-CIFT authors'). An earlier version of this template had a blank line there
    (``Response:{output}\\n\\nThe answer is: \\n``), which moved token-level scores by up to 0.23
    with SmolLM2-135M-Instruct.
    """
    return (
        f"{rating_instruction}\n"
        f"Instruction:{record.query}\n"
        f"Response:{record.output}\n"
        "The answer is: \n"
    )


def plain_prompt(record: Record) -> str:
    """Prompt for fine-tuning and evaluation with models that have no chat template."""
    return f"### Instruction:\n{record.query}\n\n### Response:\n"


def chat_messages(record: Record) -> list[dict[str, str]]:
    """The user turn for fine-tuning and evaluation with models that have a chat template."""
    return [{"role": "user", "content": record.query}]
