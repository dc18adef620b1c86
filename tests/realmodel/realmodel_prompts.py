"""Chat prompts with short factual answers, shared by the real-model tests."""

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "How many days are in a week?",
    "Write a haiku about the sea.",
    "What is 12 times 12?",
    "Who wrote Romeo and Juliet?",
    "Explain in one sentence what a CPU does.",
    "List two animals that live in the ocean.",
]
NEW_TOKENS = 32


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]
