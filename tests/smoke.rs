mod common;

#[tokio::test]
async fn template_clone_is_migrated() {
    let db = common::test_db().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM appliances")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}
