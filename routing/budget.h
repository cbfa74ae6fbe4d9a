/* Retry budget of one provider, shared by every worker: each request deposits
 * a fraction of a retry (the route's budget_ratio) and each retry withdraws a
 * whole one, so retries stay below ratio x requests plus a small reserve and an
 * outage cannot multiply the load on a provider (Finagle's RetryBudget idea). */
#ifndef LLMGATE_ROUTING_BUDGET_H
#define LLMGATE_ROUTING_BUDGET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define BUDGET_RESERVE 10 /* retries available before any request, and the most ever saved up */

struct retry_budget {
    _Atomic int64_t milli;      /* available retries x 1000 */
    _Atomic uint64_t exhausted; /* retries refused (metric) */
};

/* A full budget (BUDGET_RESERVE retries). */
void budget_init(struct retry_budget *b);
/* A request was sent to the provider; ratio_permille/1000 of a retry is earned. */
void budget_deposit(struct retry_budget *b, unsigned ratio_permille);
/* Takes one retry; false (and counted) when the budget is spent. */
bool budget_withdraw(struct retry_budget *b);
/* Retries available now (rounded down). */
int64_t budget_available(const struct retry_budget *b);

#endif
