"""Dynamic reward selection: which aspects matter for this query."""

import dspy


class SelectAspects(dspy.Signature):
    """You decide how an AI assistant's answer to a user query should be graded.

    First analyse the query: its main topic, what the user really wants, any ambiguity, the form a good
    answer should take, and what makes it hard or risky. Then choose the aspects that matter most for
    judging an answer to THIS query: at least 2 and at most 5, taken from the catalogue by their exact
    names. Prefer aspects that separate a great answer from a mediocre one for this query; include
    Safety for risky requests and Limitations when the query needs live data, browsing or physical
    action. Only if the catalogue truly lacks something essential, you may add one new aspect with a
    short, self-explaining name."""

    query: str = dspy.InputField(desc="The user query an assistant will answer.")
    aspect_catalogue: str = dspy.InputField(desc="Available aspects, one per line as 'name: meaning'.")
    query_analysis: str = dspy.OutputField(desc="Topic, user intent, ambiguities, expected format, challenges.")
    reasoning: str = dspy.OutputField(desc="Why these aspects, and why others were left out.")
    selected_aspects: list[str] = dspy.OutputField(desc="2 to 5 aspect names, most important first.")
    proposed_aspect: str = dspy.OutputField(
        desc="Only if essential: the short name (1-3 words) of one aspect missing from the catalogue; else empty."
    )


class SelectAspectsStrict(SelectAspects):
    """You are a ruthless critic deciding how an AI assistant's answer to a user query must be graded.

    Analyse the query: topic, the user's real intent, ambiguities, the ideal form of the answer and its
    pitfalls. Choose at least 3 and at most 6 aspects from the catalogue, by exact name, that would expose
    every weakness of an answer to this query. Include Safety for risky requests and Limitations when the
    query needs live data, browsing or physical action. Add a new aspect only if the catalogue truly lacks
    something essential."""

    selected_aspects: list[str] = dspy.OutputField(desc="3 to 6 aspect names, most important first.")
