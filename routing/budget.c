/* The retry budget: a capped token bucket in thousandths of a retry, refilled by
 * requests rather than by time. */
#include "routing/budget.h"

#define CAP_MILLI ((int64_t)BUDGET_RESERVE * 1000)

void budget_init(struct retry_budget *b)
{
    atomic_init(&b->milli, CAP_MILLI);
    atomic_init(&b->exhausted, 0);
}

void budget_deposit(struct retry_budget *b, unsigned ratio_permille)
{
    int64_t cur = atomic_load(&b->milli);
    for (;;) {
        int64_t next = cur + ratio_permille;
        if (next > CAP_MILLI) next = CAP_MILLI;
        if (next == cur || atomic_compare_exchange_weak(&b->milli, &cur, next)) return;
    }
}

bool budget_withdraw(struct retry_budget *b)
{
    int64_t cur = atomic_load(&b->milli);
    while (cur >= 1000) {
        if (atomic_compare_exchange_weak(&b->milli, &cur, cur - 1000)) return true;
    }
    atomic_fetch_add(&b->exhausted, 1);
    return false;
}

int64_t budget_available(const struct retry_budget *b)
{
    return atomic_load(&((struct retry_budget *)b)->milli) / 1000;
}
