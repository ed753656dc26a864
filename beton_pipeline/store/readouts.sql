-- Exposures and conversions per variant of one experiment (store/readouts.py: experiment_counts).
-- Parameters: $flag, $goal_event, $period_start / $period_end (the period [start, end); null = open),
-- $window_days (the conversion window; null = no window).
-- A user's exposure is their first inside the period (the lowest exposure_number there), its variant
-- the one they count in; they saw several variants when the period shows more than one. Conversion:
-- the goal event by the same user strictly after that exposure, within the window when there is one;
-- with a window, users exposed less than a window before the data's last exported event are only "awaiting"
-- (store/readouts.py fills in the horizon's filter: tracked events left out, on a warehouse that has them).
with period_exposures as (
    select distinct_id, variant, exposed_at, exposure_number
    from intermediate.int_experiment_exposures
    where feature_flag = $flag
        and ($period_start is null or exposed_at >= cast($period_start as timestamp))
        and ($period_end is null or exposed_at < cast($period_end as timestamp))
),

first_in_period as (
    select distinct_id, min(exposure_number) as exposure_number, count(distinct variant) > 1 as saw_several
    from period_exposures
    group by distinct_id
),

first_exposure as (
    select e.distinct_id, e.variant, e.exposed_at, f.saw_several
    from period_exposures as e
    inner join first_in_period as f on f.distinct_id = e.distinct_id and f.exposure_number = e.exposure_number
),

horizon as (  -- the export's last event: an event tracked a moment ago does not close other users' windows
    select max(occurred_at) as last_event_at from intermediate.int_events_resolved {exported_only}
),

converted as (
    select distinct f.distinct_id
    from first_exposure as f
    inner join intermediate.int_events_resolved as g
        on g.distinct_id = f.distinct_id
        and g.event_name = $goal_event
        and g.occurred_at > f.exposed_at
        and ($window_days is null or g.occurred_at < f.exposed_at + to_days(cast($window_days as integer)))
),

exposed as (
    select
        f.*,
        $window_days is null or f.exposed_at + to_days(cast($window_days as integer)) <= h.last_event_at as in_window
    from first_exposure as f
    cross join horizon as h
)

select
    e.variant,
    count(*) filter (where e.in_window) as exposures,
    count(c.distinct_id) filter (where e.in_window) as conversions,
    count(*) filter (where e.saw_several) as saw_several,
    count(*) filter (where not e.in_window) as awaiting
from exposed as e
left join converted as c on c.distinct_id = e.distinct_id
group by e.variant
order by e.variant
