-- Every event with the account it belongs to and how it was resolved (data contract §2), in order:
--   1. properties.$groups.company (a domain or a CRM record_id)
--   2. the e-mail domain of person_properties.email, when it is a known account's domain (never free mail)
--   3. crm_people, by the e-mail this distinct_id carried on this or an earlier event
-- Events that resolve to no account keep account_id null (counted in the ingest summary, never dropped).
-- Grain: one row per event.
-- The configured property features (beton.yaml discovery.property_features) are read out of the JSON here,
-- once, as property_1 … property_N (the value on the feature's own event, else null); the JSON text itself
-- goes no further (it is most of an event's bytes, and every model downstream would carry it).
-- is_tracked marks the exposures and conversions `beton serve` recorded: they feed the experiment readouts only;
-- the behaviour models (account windows, occurrences, account features) leave them out, so discovery and the
-- scores read the analytics export alone (a conversion sent both ways would otherwise count twice).
with events as (
    select
        event_id,
        distinct_id,
        event_name,
        occurred_at,
        group_company_key,
        person_email,
        current_url,
        feature_flag,
        feature_flag_response,
        is_tracked
        {%- for feature in var('property_features') %},
        case
            when event_name = '{{ feature.event }}' then {{ json_string('properties', [feature.property]) }}
        end as property_{{ loop.index }}
        {%- endfor %}
    from {{ ref('stg_posthog__events') }}
),

keys as (
    select * from {{ ref('int_account_keys') }}
),

free_mail as (
    select lower(domain) as domain from {{ ref('free_email_domains') }}
),

account_domains as (
    select match_key as domain, account_id
    from keys
    where key_type in ('crm_domain', 'product_group_key')
),

people as (
    select email, company_record_id
    from (
        select
            email,
            company_record_id,
            row_number() over (partition by email order by crm_created_at nulls last, person_record_id) as email_rank
        from {{ ref('stg_attio__people') }}
        where email is not null and company_record_id is not null
    ) as ranked_people
    where email_rank = 1
),

-- The first e-mail each distinct_id carried, and when: later anonymous events of that id inherit it.
identified as (
    select distinct_id, person_email as identified_email, occurred_at as identified_at
    from (
        select
            distinct_id,
            person_email,
            occurred_at,
            row_number() over (partition by distinct_id order by occurred_at, event_id) as email_rank
        from events
        where person_email is not null
    ) as ranked_emails
    where email_rank = 1
),

with_email as (
    select
        e.*,
        coalesce(
            e.person_email,
            case when i.identified_at <= e.occurred_at then i.identified_email end
        ) as known_email
    from events as e
    left join identified as i on i.distinct_id = e.distinct_id
),

resolved as (
    select
        w.*,
        g.account_id as group_account_id,
        case when f.domain is null then d.account_id end as email_domain_account_id,
        p.company_record_id as crm_person_account_id
    from with_email as w
    left join keys as g on g.match_key = w.group_company_key
    left join account_domains as d on d.domain = {{ email_domain('w.person_email') }}
    left join free_mail as f on f.domain = {{ email_domain('w.person_email') }}
    left join people as p on p.email = w.known_email
)

select
    event_id,
    distinct_id,
    event_name,
    occurred_at,
    current_url,
    feature_flag,
    feature_flag_response,
    is_tracked,
    {% for feature in var('property_features') -%}
    property_{{ loop.index }},
    {% endfor -%}
    coalesce(group_account_id, email_domain_account_id, crm_person_account_id) as account_id,
    case
        when group_account_id is not null then 'group'
        when email_domain_account_id is not null then 'email_domain'
        when crm_person_account_id is not null then 'crm_person'
    end as resolution_method
from resolved
