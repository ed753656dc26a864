with source as (
    select * from {{ source('raw', 'raw_billing_subscriptions') }}
),

renamed as (
    select
        id as subscription_id,
        customer as customer_id,
        status,
        -- dates
        created as created_at,
        trial_end as trial_end_at,
        canceled_at,
        -- plan: plan_amount is in minor units per interval, quantity included
        plan_amount as plan_amount_minor,
        plan_interval,
        coalesce(plan_interval_count, 1) as plan_interval_count,
        currency,
        -- billed every plan_interval_count intervals (Stripe: a quarterly plan is month x 3)
        cast(plan_amount as double) / 100.0 * (
            case plan_interval
                when 'year' then 1.0
                when 'month' then 12.0
                when 'week' then 52.0
                when 'day' then 365.0
            end
        ) / coalesce(plan_interval_count, 1) as annualized_amount
    from source
)

select * from renamed
