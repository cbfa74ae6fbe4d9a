/* Umbrella header for the engine core (model, tokenizer, backends, scheduler). */
#ifndef LLMGATE_ENGINE_H
#define LLMGATE_ENGINE_H
#endif
