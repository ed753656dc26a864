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
        currency,
        cast(plan_amount as double) / 100.0 * (
            case plan_interval
                when 'year' then 1.0
                when 'month' then 12.0
                when 'week' then 52.0
                when 'day' then 365.0
            end
        ) as annualized_amount
    from source
)

select * from renamed
