-- The daily risk sets' deltas (store.monitoring.RISK_SET_DELTAS_SQL): per (discovery cohort or not,
-- signal or '' for every account, day, age band), +1 for each account entering a risk set, -1 leaving it,
-- and the conversions. Parameters: $discovery_months, $band_lo, $band_hi, $band; view risk_set_firings.
with accounts as (
    select account_id, started_at::date as s,
        (case when converted then converted_at else outcome_window_end_at end)::date as l, converted,
        coalesce(is_eligible and strftime(cohort_month, '%Y-%m') in (select unnest($discovery_months)), false)
            as discovery
    from marts.account_outcomes
    where has_events and not converted_before_start
),
bands as (
    select unnest($band_lo) as lo_age, unnest($band_hi) as hi_age, unnest($band) as band
),
fired as (
    select account_id, signal_id, min(fired_at)::date as f from risk_set_firings group by account_id, signal_id
),
segments as (
    select a.discovery, '' as signal_id, b.band, a.s + b.lo_age as lo, least(a.s + b.hi_age, a.l + 1) as hi
    from accounts a cross join bands b
    union all
    select a.discovery, f.signal_id, b.band, greatest(a.s + b.lo_age, f.f + 1) as lo,
        least(a.s + b.hi_age, a.l + 1) as hi
    from accounts a join fired f on f.account_id = a.account_id cross join bands b
),
conversions as (
    select a.discovery, '' as signal_id, a.l as day, b.band
    from accounts a join bands b on a.l - a.s >= b.lo_age and a.l - a.s < b.hi_age
    where a.converted
    union all
    select a.discovery, f.signal_id, a.l as day, b.band
    from accounts a join fired f on f.account_id = a.account_id
        join bands b on a.l - a.s >= b.lo_age and a.l - a.s < b.hi_age
    where a.converted and f.f < a.l
),
deltas as (
    select discovery, signal_id, lo as day, band, 1 as at_risk, 0 as events from segments where lo < hi
    union all
    select discovery, signal_id, hi as day, band, -1 as at_risk, 0 as events from segments where lo < hi
    union all
    select discovery, signal_id, day, band, 0 as at_risk, 1 as events from conversions
)
select discovery, signal_id, day, band, sum(at_risk)::bigint as at_risk, sum(events)::bigint as events
from deltas
group by discovery, signal_id, day, band
order by day
