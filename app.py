"""CLAFusion Explorer — home page."""

import streamlit as st

st.set_page_config(page_title="CLAFusion Explorer", layout="wide")
st.title("CLAFusion Explorer")
st.write("Fuse two neural networks of different depth and width by cross-layer alignment and optimal transport.")
