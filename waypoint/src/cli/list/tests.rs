use std::collections::BTreeMap;

use gateway_api::gateways::{Gateway, GatewaySpec, GatewayStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::*;

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        message: message.into(),
        observed_generation: None,
        reason: reason.into(),
        status: status.into(),
        type_: type_.into(),
    }
}

fn gateway(
    ns: &str,
    name: &str,
    class: &str,
    labels: &[(&str, &str)],
    conditions: Vec<Condition>,
) -> Gateway {
    let mut gw = Gateway::new(
        name,
        GatewaySpec {
            gateway_class_name: class.into(),
            ..GatewaySpec::default()
        },
    );
    gw.metadata.namespace = Some(ns.into());
    if !labels.is_empty() {
        gw.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        );
    }
    if !conditions.is_empty() {
        gw.status = Some(GatewayStatus {
            conditions: Some(conditions),
            ..GatewayStatus::default()
        });
    }
    gw
}

#[test]
fn waypoints_are_the_class_sorted_by_namespace_then_name() {
    let all = vec![
        gateway("b", "w", "istio-waypoint", &[], vec![]),
        gateway("a", "z", "istio-waypoint", &[], vec![]),
        gateway("a", "ingress", "istio", &[], vec![]),
        gateway("a", "y", "istio-waypoint", &[], vec![]),
        gateway("a", "x", "ambient-waypoint", &[], vec![]),
    ];
    let names = |gws: Vec<Gateway>| -> Vec<String> {
        gws.iter()
            .map(|g| {
                format!(
                    "{}/{}",
                    g.metadata.namespace.as_deref().unwrap_or_default(),
                    g.metadata.name.as_deref().unwrap_or_default()
                )
            })
            .collect()
    };
    assert_eq!(
        names(waypoints(all.clone(), "istio-waypoint")),
        ["a/y", "a/z", "b/w"]
    );
    assert_eq!(names(waypoints(all, "ambient-waypoint")), ["a/x"]);
}

#[test]
fn list_tables() {
    let programmed = || vec![condition("Programmed", "True", "Programmed", "ok")];
    for (name, gateways, all_namespaces, want) in [
        (
            "no labels, no status",
            vec![gateway("default", "waypoint", "c", &[], vec![])],
            false,
            "NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\n\
             waypoint     default      none             False\n",
        ),
        (
            "labels and Programmed",
            vec![
                gateway(
                    "default",
                    "waypoint",
                    "c",
                    &[("istio.io/rev", "canary"), ("istio.io/waypoint-for", "all")],
                    programmed(),
                ),
                gateway("default", "w2", "c", &[], vec![]),
            ],
            false,
            "NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\n\
             waypoint     canary       all              True\n\
             w2           default      none             False\n",
        ),
        (
            "the last Programmed condition wins, others are ignored",
            vec![gateway(
                "default",
                "waypoint",
                "c",
                &[],
                vec![
                    condition("Programmed", "True", "", ""),
                    condition("Accepted", "True", "", ""),
                    condition("Programmed", "Unknown", "", ""),
                ],
            )],
            false,
            "NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\n\
             waypoint     default      none             Unknown\n",
        ),
        (
            "-A adds the namespace",
            vec![
                gateway("bookinfo", "waypoint", "c", &[], programmed()),
                gateway("default", "waypoint", "c", &[], vec![]),
            ],
            true,
            "NAMESPACE     NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\n\
             bookinfo      waypoint     default      none             True\n\
             default       waypoint     default      none             False\n",
        ),
        (
            "no waypoint of the class: the header only",
            vec![],
            false,
            "NAME     REVISION     TRAFFIC TYPE     PROGRAMMED\n",
        ),
    ] {
        assert_eq!(list_table(&gateways, all_namespaces), want, "{name}");
    }
}

#[test]
fn status_shows_the_last_condition_scanned() {
    let accepted = condition("Accepted", "True", "Accepted", "Resource accepted");
    let programmed = condition("Programmed", "True", "Programmed", "assigned");
    let not_programmed = condition("Programmed", "False", "AddressNotUsable", "no address");
    let empty = Shown::default();
    let gw = |conditions| gateway("default", "waypoint", "c", &[], conditions);
    for (name, read, previous, want_shown, want_programmed) in [
        (
            "stops at Programmed=True",
            Some(gw(vec![
                accepted.clone(),
                programmed.clone(),
                not_programmed.clone(),
            ])),
            empty.clone(),
            Shown::from(&programmed),
            true,
        ),
        (
            "not programmed: the last condition",
            Some(gw(vec![not_programmed.clone(), accepted.clone()])),
            empty.clone(),
            Shown::from(&accepted),
            false,
        ),
        (
            "no conditions: the previous row's",
            Some(gw(vec![])),
            Shown::from(&accepted),
            Shown::from(&accepted),
            false,
        ),
        (
            "unreadable: the previous row's",
            None,
            empty.clone(),
            empty.clone(),
            false,
        ),
    ] {
        let (shown, programmed) = status_condition(read.as_ref(), &previous);
        assert_eq!(shown, want_shown, "{name}");
        assert_eq!(programmed, want_programmed, "{name}");
    }
    let read = gw(vec![programmed.clone()]);
    assert_eq!(
        status_row(Some(&read), &Shown::from(&programmed), false),
        "waypoint\tTrue\tProgrammed\tProgrammed\tassigned\n"
    );
    assert_eq!(
        status_row(Some(&read), &Shown::from(&programmed), true),
        "default\twaypoint\tTrue\tProgrammed\tProgrammed\tassigned\n"
    );
    assert_eq!(status_row(None, &empty, false), "\t\t\t\t\n");
}
