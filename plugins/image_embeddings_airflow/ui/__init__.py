"""What a person sees: the day's report.html and the Airflow UI view listing the days."""
