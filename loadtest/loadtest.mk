# loadtest/: llmgate-mock, load generator, benchmarks
