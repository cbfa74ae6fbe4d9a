# engine tokenizer and chat templates (filled in by the tokenizer work)
