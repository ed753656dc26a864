with source as (
    select * from {{ source('raw', 'raw_billing_invoices') }}
),

renamed as (
    select
        id as invoice_id,
        customer as customer_id,
        subscription as subscription_id,
        status,
        -- money, minor units
        amount_paid as amount_paid_minor,
        currency,
        -- dates
        created as created_at,
        paid_at
    from source
)

select * from renamed
